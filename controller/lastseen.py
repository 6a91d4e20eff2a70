"""Last-seen times, written behind in batches so a heartbeat costs no database write."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine

from edgefleet.controller.db import write_behind
from edgefleet.controller.models import Device

_UPDATE = (
    update(Device.__table__)  # type: ignore[attr-defined]
    .where(Device.__table__.c.id == bindparam("did"))  # type: ignore[attr-defined]
    .values(last_seen_at=bindparam("seen"))
)


class LastSeen:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def touch(self, device_id: str) -> None:
        self._pending[device_id] = datetime.now(UTC)

    def flush(self) -> int:
        """Write every pending time; returns how many devices. On failure they stay
        pending (unless a newer time came meanwhile) and the error is raised."""
        with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return 0
            rows = [{"did": k, "seen": v} for k, v in pending.items()]
            try:
                write_behind(self._engine, lambda conn, chunk: conn.execute(_UPDATE, chunk), rows)
            except BaseException:
                self._pending = {**pending, **self._pending}
                raise
            return len(rows)
