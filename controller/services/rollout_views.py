"""What operators read about rollouts: summaries for the list, the whole story (waves,
counts, failures, events) for one."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from edgefleet.controller.models import (
    Device,
    Profile,
    Rollout,
    RolloutDevice,
    RolloutEvent,
    RolloutWave,
    Site,
    aware,
    utcnow,
)
from edgefleet.controller.rollouts import store
from edgefleet.controller.rollouts import windows as win
from edgefleet.controller.rollouts.lease import current
from edgefleet.controller.rollouts.states import ACTIVE, DeviceOutcome, RolloutState, WaveState
from edgefleet.controller.runtime import Runtime
from edgefleet.errors import BadRequest, NotFound

MAX_FAILURES_SHOWN = 20


def list_rollouts(rt: Runtime, state: str | None, limit: int) -> list[dict[str, Any]]:
    if state is not None and state not in RolloutState.__members__:
        raise BadRequest(
            f"unknown rollout state {state!r}; one of {', '.join(RolloutState)}",
            code="bad_state",
        )
    query = (
        select(Rollout, Profile.name)
        .join(Profile, Profile.id == Rollout.profile_id)
        .order_by(Rollout.id.desc())  # type: ignore[union-attr]
        .limit(limit)
    )
    if state is not None:
        query = query.where(Rollout.state == state)
    with Session(rt.engine) as s:
        rows = s.execute(query).all()
        ids = [r.id for r, _ in rows]
        by_rollout: dict[int, Counter[str]] = {}
        if ids:
            for rid, outcome, n in s.execute(
                select(RolloutDevice.rollout_id, RolloutDevice.state, func.count())
                .where(RolloutDevice.rollout_id.in_(ids))  # type: ignore[attr-defined]
                .group_by(RolloutDevice.rollout_id, RolloutDevice.state)
            ):
                by_rollout.setdefault(rid, Counter())[outcome] = n
    return [summary(r, name, by_rollout.get(r.id, Counter())) for r, name in rows]  # type: ignore[arg-type]


def summary(r: Rollout, profile: str, counts: Counter[str]) -> dict[str, Any]:
    return {
        "id": r.id,
        "profile": profile,
        "revision": r.target_revision,
        "from_revision": r.from_revision,
        "state": r.state,
        "reason": r.reason,
        "current_wave": r.current_wave if r.state in ACTIVE else None,
        "waves_total": r.waves_total,
        "devices": sum(counts.values()),
        "counts": _outcomes(counts),
        "created_by": r.created_by,
        "created_at": _iso(r.created_at),
        "updated_at": _iso(r.updated_at),
        "finished_at": _iso(r.finished_at),
    }


def get_rollout(rt: Runtime, rollout_id: int) -> dict[str, Any]:
    with Session(rt.engine) as s:
        return detail(s, rollout_id)


def detail(s: Session, rollout_id: int) -> dict[str, Any]:
    """The rollout with its waves, failed devices and events."""
    found = s.execute(
        select(Rollout, Profile.name)
        .join(Profile, Profile.id == Rollout.profile_id)
        .where(Rollout.id == rollout_id)
    ).first()
    if found is None:
        raise NotFound(
            f"no rollout {rollout_id}; `edgefleet rollouts list` shows them", code="no_rollout"
        )
    r, profile = found
    by_wave = store.counts(s, rollout_id)
    out = summary(r, profile, Counter(store.total(by_wave)))
    waves = s.scalars(
        select(RolloutWave).where(RolloutWave.rollout_id == rollout_id).order_by(RolloutWave.number)  # type: ignore[arg-type]
    ).all()
    waiting = _waiting_for_window(s, r) if r.state in ACTIVE else []
    out["spec"] = r.spec
    out["waves"] = [
        {
            "number": w.number,
            "step": w.step,
            "state": w.state,
            "devices": sum(by_wave.get(w.number, Counter()).values()),
            "counts": _outcomes(by_wave.get(w.number, Counter())),
            "started_at": _iso(w.started_at),
            "bake_until": _iso(w.bake_until),
            "finished_at": _iso(w.finished_at),
            "waiting_for_window": waiting if w.number == r.current_wave else [],
            "commits": w.commits,
            "gate": w.gate,
            "shadow_until": _iso(w.shadow_until),
            "shadow": w.shadow,
        }
        for w in waves
    ]
    out["failures"] = [
        {"device": d, "wave": wave, "reason": reason}
        for d, wave, reason in s.execute(
            select(RolloutDevice.device_id, RolloutDevice.wave, RolloutDevice.reason)
            .where(
                RolloutDevice.rollout_id == rollout_id,
                RolloutDevice.state == DeviceOutcome.failed,
            )
            .order_by(RolloutDevice.resolved_at)  # type: ignore[arg-type]
            .limit(MAX_FAILURES_SHOWN)
        )
    ]
    out["events"] = [
        {
            "at": _iso(e.at),
            "actor": e.actor,
            "action": e.action,
            "reason": e.reason,
            "detail": e.detail,
        }
        for e in s.scalars(
            select(RolloutEvent)
            .where(RolloutEvent.rollout_id == rollout_id)
            .order_by(RolloutEvent.id)  # type: ignore[arg-type]
        )
    ]
    return out


def rollout_devices(
    rt: Runtime, rollout_id: int, wave: int | None, state: str | None, limit: int
) -> list[dict[str, Any]]:
    """The rollout's devices (one wave's, in one state), by wave then id."""
    if state is not None and state not in DeviceOutcome.__members__:
        raise BadRequest(
            f"unknown device outcome {state!r}; one of {', '.join(DeviceOutcome)}",
            code="bad_state",
        )
    query = (
        select(RolloutDevice)
        .where(RolloutDevice.rollout_id == rollout_id)
        .order_by(RolloutDevice.wave, RolloutDevice.device_id)  # type: ignore[arg-type]
        .limit(limit)
    )
    if wave is not None:
        query = query.where(RolloutDevice.wave == wave)
    if state is not None:
        query = query.where(RolloutDevice.state == state)
    with Session(rt.engine) as s:
        if s.get(Rollout, rollout_id) is None:
            raise NotFound(
                f"no rollout {rollout_id}; `edgefleet rollouts list` shows them",
                code="no_rollout",
            )
        return [
            {
                "device": rd.device_id,
                "wave": rd.wave,
                "state": rd.state,
                "reason": rd.reason,
                "previous_revision": rd.previous_revision,
                "moved_at": _iso(rd.moved_at),
                "resolved_at": _iso(rd.resolved_at),
            }
            for rd in s.scalars(query)
        ]


def _waiting_for_window(s: Session, r: Rollout) -> list[str]:
    """Sites of the current wave's pending devices whose maintenance window is closed."""
    if not r.spec.get("respect_windows", True):
        return []
    wave = s.scalar(
        select(RolloutWave.state).where(
            RolloutWave.rollout_id == r.id, RolloutWave.number == r.current_wave
        )
    )
    if wave != WaveState.updating:
        return []
    sites = s.execute(
        select(Site.name, Site.timezone, Site.maintenance_windows)
        .join(Device, Device.site_id == Site.id)
        .join(RolloutDevice, RolloutDevice.device_id == Device.id)
        .where(
            RolloutDevice.rollout_id == r.id,
            RolloutDevice.wave == r.current_wave,
            RolloutDevice.state == DeviceOutcome.pending,
        )
    ).all()
    now = utcnow()
    return sorted(
        {
            name
            for name, tz, texts in sites
            if texts and not win.is_open([win.parse_window(t) for t in texts], win.zone(tz), now)
        }
    )


def engine_status(rt: Runtime) -> dict[str, Any]:
    holder, expires = current(rt.engine)
    return {
        "holder": holder,
        "expires_at": datetime.fromtimestamp(expires, utcnow().tzinfo).isoformat()
        if expires
        else None,
        "lease_seconds": rt.settings.rollout_lease_seconds,
    }


def _outcomes(counts: Counter[str]) -> dict[str, int]:
    return {o.value: counts.get(o.value, 0) for o in DeviceOutcome}


def _iso(value: datetime | None) -> str | None:
    dt = aware(value)
    return dt.isoformat() if dt else None
