"""Operator actions on rollouts: create, pause, resume, abort, roll back. Each records
who and why, as a rollout event and in the audit log, and wakes the driver.

``create`` takes the same spec as the dry run; the spec's ``seed`` ranks the devices, so
a plan's answer handed back here makes exactly the waves it showed. The waves' devices
are fixed now: devices enrolled later are in no wave and get the profile's released
revision (the safe one) until the rollout completes and releases the target.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.models import Profile, Rollout, RolloutDevice, RolloutWave, utcnow
from edgefleet.controller.roles import Operator
from edgefleet.controller.rollouts import store
from edgefleet.controller.rollouts.advance import revert
from edgefleet.controller.rollouts.spec import RolloutSpec
from edgefleet.controller.rollouts.states import ACTIVE, DeviceOutcome, RolloutState, WaveState
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit, rollout_views, rollouts
from edgefleet.errors import Conflict, NotFound


def create(
    rt: Runtime, who: Operator, spec: RolloutSpec, reason: str, now: datetime
) -> dict[str, Any]:
    chosen = rollouts.selection(rt, spec, now)
    members, waves, target, seed = chosen.members, chosen.waves, chosen.target, chosen.seed
    stored = spec.model_copy(update=chosen.spec).model_dump(mode="json")
    with session_scope(rt.engine) as s:
        row = s.get(Profile, chosen.profile.id, with_for_update=True)
        assert row is not None
        busy = store.active_rollout(s, row.id)  # type: ignore[arg-type]
        if busy is not None:
            raise Conflict(
                f"rollout {busy} of profile {row.name!r} is still running or paused; "
                "let it finish, or abort it, before starting another",
                code="rollout_active",
            )
        if row.released_revision is None:
            row.released_revision = row.latest_revision  # followers stay where they are
        r = Rollout(
            profile_id=row.id,  # type: ignore[arg-type]
            target_revision=target,
            from_revision=row.followed_revision,
            spec=stored,
            state=RolloutState.running,
            reason=reason,
            waves_total=len(waves),
            created_by=who.username,
        )
        s.add(r)
        s.flush()
        assert r.id is not None
        for number, wave in enumerate(waves, start=1):
            s.add(RolloutWave(rollout_id=r.id, number=number, step=str(wave.step)))
        s.execute(
            insert(RolloutDevice),
            [
                {
                    "rollout_id": r.id,
                    "device_id": m.device_id,
                    "wave": number,
                    "state": DeviceOutcome.pending.value,
                    "offline": False,
                    "reason": "",
                }
                for number, wave in enumerate(waves, start=1)
                for m in wave.members
            ],
        )
        store.event(
            s,
            r.id,
            who.username,
            "created",
            reason,
            devices=len(members),
            waves=[len(w.members) for w in waves],
            seed=seed,
        )
        audit.record(s, who, "rollout.create", str(r.id), profile=row.name, revision=target)
        rollout_id = r.id
    rt.nudge.now()
    return rollout_views.get_rollout(rt, rollout_id)


def pause(rt: Runtime, who: Operator, rollout_id: int, reason: str) -> dict[str, Any]:
    def act(s: Session, r: Rollout) -> None:
        _allowed(r, "pause", (RolloutState.running,))
        r.state = RolloutState.paused
        r.reason = reason or f"paused by {who.username}"

    return _act(rt, who, rollout_id, "paused", reason, act)


def resume(rt: Runtime, who: Operator, rollout_id: int, reason: str) -> dict[str, Any]:
    """Go on from where it stopped. Resuming past a failed gate accepts it: the failures
    counted so far no longer trip ``max_failures``, and a wave whose gate failed passes."""

    def act(s: Session, r: Rollout) -> None:
        _allowed(r, "resume", (RolloutState.paused,))
        r.accepted_failures = (
            s.scalar(
                select(func.count()).where(
                    RolloutDevice.rollout_id == r.id,
                    RolloutDevice.state == DeviceOutcome.failed,
                )
            )
            or 0
        )
        wave = s.scalars(
            select(RolloutWave).where(
                RolloutWave.rollout_id == r.id, RolloutWave.number == r.current_wave
            )
        ).one()
        if wave.gate and not wave.gate.get("ok"):
            wave.gate = {**wave.gate, "overridden_by": who.username}
        r.state = RolloutState.running
        r.reason = reason or f"resumed by {who.username}"

    return _act(rt, who, rollout_id, "resumed", reason, act)


def abort(rt: Runtime, who: Operator, rollout_id: int, reason: str) -> dict[str, Any]:
    """Stop for good; devices already moved keep the target until a rollback, and a
    shadow phase ends (its evidence is kept)."""

    def act(s: Session, r: Rollout) -> None:
        _allowed(r, "abort", ACTIVE)
        r.state, r.finished_at = RolloutState.aborted, r.updated_at
        r.reason = reason or f"aborted by {who.username}"
        for wave in s.scalars(
            select(RolloutWave).where(
                RolloutWave.rollout_id == r.id,
                RolloutWave.state.in_(  # type: ignore[attr-defined]
                    [WaveState.shadowing, WaveState.updating, WaveState.baking]
                ),
            )
        ):
            wave.state, wave.finished_at = WaveState.failed, r.updated_at

    out = _act(rt, who, rollout_id, "aborted", reason, act)
    rt.changed()  # a wave in its shadow phase stops shadowing
    return out


def rollback(rt: Runtime, who: Operator, rollout_id: int, reason: str) -> dict[str, Any]:
    """Put back what the rollout moved, as one commit that says what it reverts."""
    with rt.gitops.change(who.username) as change, session_scope(rt.engine) as s:
        r = _locked(s, rollout_id)
        _allowed(
            r,
            "roll back",
            (*ACTIVE, RolloutState.aborted, RolloutState.completed),
        )
        back = revert(
            s, r, change, who.username, reason or f"rolled back by {who.username}", utcnow()
        )
        audit.record(s, who, "rollout.rolled_back", str(rollout_id), reason=reason)
    rt.changed()
    rt.nudge.now()
    out = rollout_views.get_rollout(rt, rollout_id)
    return {**out, "reverted_devices": back, "gitops": change.outcome.public()}


def _act(rt: Runtime, who: Operator, rollout_id: int, action: str, reason: str, act: Any) -> Any:
    with session_scope(rt.engine) as s:
        r = _locked(s, rollout_id)
        r.updated_at = utcnow()
        act(s, r)
        store.event(s, rollout_id, who.username, action, reason)
        audit.record(s, who, f"rollout.{action}", str(rollout_id), reason=reason)
    rt.nudge.now()
    return rollout_views.get_rollout(rt, rollout_id)


def _locked(s: Session, rollout_id: int) -> Rollout:
    r = s.get(Rollout, rollout_id, with_for_update=True)
    if r is None:
        raise NotFound(
            f"no rollout {rollout_id}; `edgefleet rollouts list` shows them", code="no_rollout"
        )
    return r


def _allowed(r: Rollout, verb: str, states: tuple[RolloutState, ...]) -> None:
    if r.state not in states:
        raise Conflict(
            f"rollout {r.id} is {r.state}: only a {' or '.join(states)} rollout can {verb}",
            code="bad_state",
        )
