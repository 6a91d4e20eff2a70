"""Last-seen times, written behind in batches so a heartbeat costs no database write."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine

from edgefleet.controller.db import writing
from edgefleet.controller.models import Device


class LastSeen:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def touch(self, device_id: str) -> None:
        self._pending[device_id] = datetime.now(UTC)

    def flush(self) -> int:
        """Write every pending time in one statement; returns how many devices."""
        with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return 0
            stmt = (
                update(Device.__table__)  # type: ignore[attr-defined]
                .where(Device.__table__.c.id == bindparam("did"))  # type: ignore[attr-defined]
                .values(last_seen_at=bindparam("seen"))
            )
            rows = [{"did": k, "seen": v} for k, v in pending.items()]
            with writing(self._engine) as conn:
                conn.execute(stmt, rows)
            return len(rows)
