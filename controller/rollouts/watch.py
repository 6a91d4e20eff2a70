"""The status hook: when a device a rollout moved reports, store its outcome in the same
transaction as its status and wake the driver. Devices no rollout is waiting on cost
one dictionary lookup.

The devices waited on are read once per cache epoch (every move bumps it), per worker
process; an outcome stored here leaves this process's copy at once, and an outdated
copy elsewhere costs at most an update that matches no row.
"""

from __future__ import annotations

import threading

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from edgefleet.controller.db import reading
from edgefleet.controller.models import Rollout, RolloutDevice, utcnow
from edgefleet.controller.rollouts import store
from edgefleet.controller.rollouts.outcome import classify
from edgefleet.controller.rollouts.states import ACTIVE, ENGINE, DeviceOutcome

Waited = dict[str, tuple[int, int, str | None]]
"""device id -> (rollout id, target revision, the attempt known when it was moved)."""


class Watch:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._waited: Waited | None = None

    def drop(self) -> None:
        """The cache epoch moved: read the devices waited on again when next asked."""
        self._waited = None

    def waited(self) -> Waited:
        found = self._waited
        if found is not None:
            return found
        with self._lock:
            if self._waited is None:
                self._waited = self._load()
            return self._waited

    def _load(self) -> Waited:
        query = (
            select(
                RolloutDevice.device_id,
                RolloutDevice.rollout_id,
                Rollout.target_revision,
                RolloutDevice.known_attempt,
            )
            .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
            .where(
                Rollout.state.in_([a.value for a in ACTIVE]),  # type: ignore[attr-defined]
                RolloutDevice.state == DeviceOutcome.updating,
            )
        )
        with reading(self._engine) as conn:
            return {d: (r, t, k) for d, r, t, k in conn.execute(query)}

    def observe(self, s: Session, device_id: str, status: dict) -> str | None:  # type: ignore[type-arg]
        """Store the outcome ``status`` shows for a waited-on device; if one was stored,
        the news for the driver (``7 succeeded``), sent once the transaction commits."""
        waited = self.waited()
        entry = waited.get(device_id)
        if entry is None:
            return None
        rollout_id, target, known = entry
        found = classify(status, target, known)
        if found is None:
            return None
        outcome, reason = found
        stored = s.execute(
            update(RolloutDevice)
            .where(
                RolloutDevice.rollout_id == rollout_id,
                RolloutDevice.device_id == device_id,
                RolloutDevice.state == DeviceOutcome.updating,
            )
            .values(state=outcome, reason=reason[:1024], resolved_at=utcnow())
        ).rowcount
        waited.pop(device_id, None)
        if not stored:
            return None
        if outcome == DeviceOutcome.failed:
            store.event(s, rollout_id, ENGINE, "device_failed", reason, device=device_id)
        return f"{rollout_id} {outcome.value}"
