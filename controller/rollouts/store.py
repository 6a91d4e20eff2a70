"""Small reads and writes of rollout rows that the engine, the services and the status
hook share."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from edgefleet.controller.db import reading
from edgefleet.controller.metrics import RolloutCounts
from edgefleet.controller.models import Rollout, RolloutDevice, RolloutEvent, utcnow
from edgefleet.controller.rollouts.states import ACTIVE, DeviceOutcome


def active_rollout(s: Session, profile_id: int) -> int | None:
    """The id of the profile's running or paused rollout, if any."""
    return s.scalars(
        select(Rollout.id).where(
            Rollout.profile_id == profile_id,
            Rollout.state.in_([a.value for a in ACTIVE]),  # type: ignore[attr-defined]
        )
    ).first()


def event(
    s: Session,
    rollout_id: int,
    actor: str,
    action: str,
    reason: str = "",
    at: datetime | None = None,
    **detail: Any,
) -> None:
    s.add(
        RolloutEvent(
            rollout_id=rollout_id,
            at=at or utcnow(),
            actor=actor,
            action=action,
            reason=reason[:1024],
            detail=detail,
        )
    )


def counts(s: Session, rollout_id: int) -> dict[int, Counter[str]]:
    """Per wave number, its devices by outcome."""
    out: dict[int, Counter[str]] = {}
    rows = s.execute(
        select(RolloutDevice.wave, RolloutDevice.state, func.count())
        .where(RolloutDevice.rollout_id == rollout_id)
        .group_by(RolloutDevice.wave, RolloutDevice.state)
    )
    for wave, state, n in rows:
        out.setdefault(wave, Counter())[state] = n
    return out


def total(by_wave: dict[int, Counter[str]]) -> dict[str, int]:
    """Every outcome's count over the waves, zeros included."""
    sums: Counter[str] = Counter()
    for c in by_wave.values():
        sums.update(c)
    return {o.value: sums.get(o.value, 0) for o in DeviceOutcome}


def rollout_counts(engine: Engine) -> RolloutCounts:
    """For the metrics: rollouts by state, and the devices of the active ones."""
    with reading(engine) as conn:
        by_state = dict(
            conn.execute(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
        )
        devices = conn.execute(
            select(RolloutDevice.rollout_id, RolloutDevice.wave, RolloutDevice.state, func.count())
            .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
            .where(Rollout.state.in_([a.value for a in ACTIVE]))  # type: ignore[attr-defined]
            .group_by(RolloutDevice.rollout_id, RolloutDevice.wave, RolloutDevice.state)
        ).all()
    return RolloutCounts(by_state, [tuple(row) for row in devices])  # type: ignore[misc]
