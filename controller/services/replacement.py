"""Hardware replacement: a new device takes a broken one's place.

The new device takes the old one's name, labels (the old one's win where both have a
key: they were set for that place in the fleet, and rollouts select by them), profile
and pinned revision, and site; ``new.replaces`` and ``old.replaced_by`` link them, and
the old device is decommissioned exactly as ``devices.decommission`` does it (its
credentials die at once on every replica). Its update records, results and rollout
membership stay under its own id; ``history`` walks the links so the new device's page
shows what its predecessors went through.

Three ways in, one ``take_over`` in the caller's transaction:

- an operator's ``replace`` (``POST /devices/{old}/replace``), one fleet-repository
  commit ``Replace <old> with <new>: <reason>``;
- a replacement-mode registration token (``tokens create --replaces OLD``): the device
  that enrols with it takes over in its enrolment transaction (``on_enrolment``), no
  operator step, audited as done by the token's creator via the token;
- the same token with approval: at approval (``at_approval``).

A rollout running over the old device: the new device gets the revision that is safe
now, the one a device outside the rollout gets (the old device's pin from before the
rollout moved it; for a follower, the profile's released revision), and the old
device's unresolved place in its wave is resolved ``skipped`` ("replaced by ..."), so
neither counts as a failure nor is waited for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Row
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.lifecycle import ACTIVE
from edgefleet.controller.models import (
    Device,
    Profile,
    RegistrationToken,
    Rollout,
    RolloutDevice,
    Site,
    UpdateRecord,
    aware,
)
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.rollouts import store
from edgefleet.controller.rollouts.states import UNRESOLVED, DeviceOutcome, RolloutState
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit, devices
from edgefleet.controller.services.updates import _public as update_public
from edgefleet.errors import BadRequest, Conflict, Gone, NotFound
from edgefleet.wire import DeviceState

MAX_CHAIN = 100
"""Links followed at most, either way, by ``history`` (a guard, not a real limit)."""

UNSETTLED = (RolloutState.running, RolloutState.paused, RolloutState.aborted)
"""Rollouts whose moved devices may still be put back (an aborted one, by rollback)."""


@dataclass
class Takeover:
    """What a replacement changed, for the caller's commit message and answer."""

    old: str
    new: str
    title: str
    why: str
    sites: set[str] = field(default_factory=set)
    profile: str | None = None
    """The new device's profile afterwards."""


def replace(
    rt: Runtime,
    who: Operator,
    old_id: str,
    new_id: str,
    reason: str = "",
    *,
    across_sites: bool = False,
) -> dict[str, Any]:
    """An operator's replacement: one transaction, one fleet-repository commit. The
    answer is the new device, with the old one under ``replaced``."""
    if old_id == new_id:
        raise BadRequest(f"device {old_id} cannot replace itself", code="same_device")
    with rt.gitops.change(who.username) as change:
        with session_scope(rt.engine) as s:
            _lock_rollouts(s, old_id)  # before the devices: the rollout engine's order
            for device_id in sorted((old_id, new_id)):
                devices._load(s, who, device_id, lock=True)
            old, new = s.get(Device, old_id), s.get(Device, new_id)
            assert old is not None and new is not None
            took = take_over(s, who, old, new, reason, across_sites=across_sites)
            out = devices._public_of(s, new)
            out["replaced"] = devices._public_of(s, old)
        rt.changed()
        change.title, change.why, change.sites = took.title, took.why, took.sites
    out["gitops"] = change.outcome.public()
    return out


def take_over(
    s: Session,
    who: Operator,
    old: Device,
    new: Device,
    reason: str = "",
    *,
    across_sites: bool = False,
    via: str | None = None,
) -> Takeover:
    """Hand ``old``'s place to ``new`` in the caller's transaction (both rows locked);
    refuses, changing nothing, what cannot be replaced. The caller commits, then calls
    ``rt.changed()`` and writes the fleet repositories of ``Takeover.sites``."""
    _check(who, old, new, across_sites)
    sites = {_site_name(s, old.site_id), _site_name(s, new.site_id)}
    extra = {"via": via} if via else {}
    pin, rollout = _safe_pin(s, who, old, new)
    devices.retire(s, who, old, replaced_by=new.id, reason=reason, **extra)
    old.replaced_by = new.id
    inherited_name = old.name or new.name
    if inherited_name is not None:
        devices.check_name_free(s, old.site_id, inherited_name, new.id)
    before = {"name": new.name, "labels": dict(new.labels), "site": _site_name(s, new.site_id)}
    new.name = inherited_name
    new.labels = {**new.labels, **old.labels}
    new.site_id = old.site_id
    if old.profile_id is not None:
        new.profile_id, new.profile_revision = old.profile_id, pin
    new.replaces = old.id
    profile = s.get(Profile, new.profile_id) if new.profile_id else None
    audit.record(
        s,
        who,
        "device.replace",
        new.id,
        old=old.id,
        reason=reason,
        name=new.name,
        labels=new.labels,
        profile=profile.name if profile else None,
        revision=new.profile_revision,
        before=before,
        **({"rollout": rollout} if rollout is not None else {}),
        **extra,
    )
    label = f"{old.id} ({old.name})" if old.name else old.id
    why = f"{who.username} replaced device {label} with {new.id}" + (f" via {via}" if via else "")
    return Takeover(
        old=old.id,
        new=new.id,
        title=f"Replace {old.id} with {new.id}: {reason or 'hardware replacement'}",
        why=why + (f": {reason}" if reason else ""),
        sites=sites,
        profile=profile.name if profile else None,
    )


def _check(who: Operator, old: Device, new: Device, across_sites: bool) -> None:
    if old.id == new.id:
        raise BadRequest(f"device {old.id} cannot replace itself", code="same_device")
    if old.replaced_by is not None:
        raise Conflict(
            f"device {old.id} was already replaced by {old.replaced_by}", code="already_replaced"
        )
    if old.state == DeviceState.decommissioned:
        raise Conflict(
            f"device {old.id} was decommissioned; only a serving device can be replaced",
            code="invalid_transition",
        )
    if old.state not in ACTIVE:
        raise Conflict(
            f"device {old.id} is {old.state} and never served: approve or reject it "
            "instead of replacing it",
            code="invalid_transition",
        )
    if new.state == DeviceState.awaiting_approval:
        raise Conflict(
            f"device {new.id} is awaiting approval: approve it first (`edgefleet devices "
            f"approve {new.id}`), then replace; or enrol it with a replacement token "
            f"(`edgefleet tokens create --replaces {old.id}`), which replaces at approval",
            code="not_enrolled",
        )
    if new.state not in ACTIVE:
        raise Conflict(
            f"device {new.id} is {new.state}; only an enrolled device can take another's place",
            code="invalid_transition",
        )
    if new.replaces is not None:
        raise Conflict(
            f"device {new.id} already took the place of {new.replaces}; a device replaces "
            "one other",
            code="already_replacing",
        )
    if new.site_id != old.site_id:
        if not across_sites:
            raise Conflict(
                f"device {new.id} is at another site than {old.id}; a replacement stays at "
                "the old device's site: pass across_sites (--across-sites) to move it there",
                code="other_site",
            )
        if not (who.may_act_at(old.site_id) and who.may_act_at(new.site_id)):
            raise Conflict(
                "moving a device between sites needs a role over both", code="other_site"
            )


def _site_name(s: Session, site_id: int) -> str:
    site = s.get(Site, site_id)
    return site.name if site else ""


def _lock_rollouts(s: Session, device_id: str) -> None:
    """Lock the unsettled rollouts the device is in, as an engine step does before it
    touches their devices, so a step never resolves the old device's place meanwhile."""
    ids = s.scalars(
        select(RolloutDevice.rollout_id).where(RolloutDevice.device_id == device_id)
    ).all()
    if ids:
        s.scalars(
            select(Rollout.id)
            .where(Rollout.id.in_(sorted(ids)), Rollout.state.in_(list(UNSETTLED)))  # type: ignore[union-attr,attr-defined]
            .order_by(Rollout.id)  # type: ignore[arg-type]
            .with_for_update()
        ).all()


def _safe_pin(s: Session, who: Operator, old: Device, new: Device) -> tuple[int | None, Any]:
    """The pinned revision the new device gets, and the rollout that decided it (if any).

    The old device's pin, unless an unsettled rollout moved it to its target: then the
    pin it had before (what a rollback would give it back), since the new device is in
    no wave and a rollback would not move it. A running or paused rollout's unresolved
    place of the old device is resolved ``skipped``."""
    pin, decided = old.profile_revision, None
    rows = s.execute(
        select(RolloutDevice, Rollout)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(
            RolloutDevice.device_id == old.id,
            Rollout.state.in_(list(UNSETTLED)),  # type: ignore[attr-defined]
        )
    ).all()
    now = datetime.now(UTC)
    for rd, r in rows:
        moved = (
            rd.moved_at is not None
            and old.profile_id == r.profile_id
            and old.profile_revision == r.target_revision
        )
        if moved:
            pin, decided = rd.previous_revision, r.id
        if r.state != RolloutState.aborted and rd.state in UNRESOLVED:
            why = f"replaced by {new.id}"
            rd.state, rd.reason, rd.resolved_at = DeviceOutcome.skipped, why, now
            rollout_id: int = r.id  # type: ignore[assignment]
            store.event(
                s,
                rollout_id,
                who.username,
                "device_replaced",
                why,
                at=now,
                device=old.id,
                by=new.id,
            )
            decided = r.id
    return pin, decided


# -- replacement-mode tokens ----------------------------------------------------------


def token_creator(token: Any) -> Operator:
    """Who a replacement by token is done as: the operator who made the token."""
    return Operator(token.created_by or "token", Role.operator)


def check_replaceable(s: Session, device_id: str, *, lock: bool = False) -> Device:
    """The device a replacement token is made for, if it can still be replaced."""
    device = s.get(Device, device_id, with_for_update=lock)
    if device is None:
        raise NotFound(f"no device {device_id}", code="unknown_device")
    if device.replaced_by is not None or device.state not in ACTIVE:
        done = f"replaced by {device.replaced_by}" if device.replaced_by else device.state
        raise Conflict(
            f"device {device_id} is {done}; a replacement token is for a serving device",
            code="not_replaceable",
        )
    return device


class EnrolmentHook:
    """Called inside the enrolment's write transaction, after the device's insert: a
    token in replacement mode (and no approval) hands the old device's place over there,
    so the device is never seen enrolled without it. A no-op for any other token."""

    def __init__(self, token: Row[Any], row: dict[str, Any]) -> None:
        self.token, self.row = token, row
        self.took: Takeover | None = None
        self.profile: str | None = token.profile_name
        """The profile the enrolment's answer names."""

    @property
    def active(self) -> bool:
        return self.token.replaces is not None and self.row["state"] == DeviceState.enrolled.value

    def __call__(self, conn: Connection) -> None:
        if not self.active:
            return
        with Session(bind=conn) as s:
            _lock_rollouts(s, self.token.replaces)
            old = s.get(Device, self.token.replaces, with_for_update=True)
            new = s.get(Device, self.row["id"])
            assert new is not None, "inserted in this transaction"
            if old is None or old.replaced_by is not None or old.state not in ACTIVE:
                raise Gone(
                    f"registration token {self.token.kid} replaces device "
                    f"{self.token.replaces}, which is no longer serving; issue a new token",
                    code="token_exhausted",
                )
            self.took = take_over(
                s, token_creator(self.token), old, new, via=f"token {self.token.kid}"
            )
            self.profile = self.took.profile
            s.flush()


@contextmanager
def on_enrolment(rt: Runtime, token: Row[Any], row: dict[str, Any]) -> Iterator[EnrolmentHook]:
    """Wrap the enrolment's transaction: a replacement holds the fleet repositories'
    writer lock around it and writes its own commit right after, as ``replace`` does."""
    hook = EnrolmentHook(token, row)
    if not hook.active:
        yield hook
        return
    with rt.gitops.change(token_creator(token).username) as change:
        yield hook
        rt.changed()
        if hook.took is not None:
            took = hook.took
            change.title, change.why, change.sites = took.title, took.why, took.sites


def at_approval(s: Session, who: Operator, device: Device) -> Takeover | None:
    """A device enrolled with a replacement token that needed approval takes the old
    device's place as it is approved (in the approval's transaction)."""
    token = s.get(RegistrationToken, device.token_id) if device.token_id else None
    if token is None or token.replaces is None:
        return None
    _lock_rollouts(s, token.replaces)
    old = s.get(Device, token.replaces, with_for_update=True)
    assert old is not None, "a foreign key"
    if old.replaced_by is not None or old.state not in ACTIVE:
        done = f"replaced by {old.replaced_by}" if old.replaced_by else old.state
        raise Conflict(
            f"device {device.id} enrolled with token {token.kid} to replace {old.id}, which "
            f"is {done} now; reject {device.id}, and enrol it with a plain token",
            code="not_replaceable",
        )
    took = take_over(s, token_creator(token), old, device, via=f"token {token.kid}")
    took.why += f", approved by {who.username}"
    return took


# -- history --------------------------------------------------------------------------


def history(rt: Runtime, who: Operator, device_id: str, limit: int = 100) -> dict[str, Any]:
    """The device's lineage (the devices it replaced and that replaced it, oldest
    first), and their update reports and rollout places, newest first: a replacement's
    page shows what happened at its place before it came."""
    with Session(rt.engine) as s:
        device = devices._load(s, who, device_id)
        chain = _lineage(s, device)
        visible = [d for d in chain if who.may_act_at(d.site_id)]
        ids = [d.id for d in visible]
        sites = {d.site_id: _site_name(s, d.site_id) for d in visible}
        updates = s.execute(
            select(UpdateRecord)
            .where(UpdateRecord.device_id.in_(ids))  # type: ignore[attr-defined]
            .order_by(UpdateRecord.received_at.desc(), UpdateRecord.id.desc())  # type: ignore[union-attr]
            .limit(limit)
        ).scalars()
        site_of = {d.id: sites[d.site_id] for d in visible}
        update_rows = [update_public(u, site_of[u.device_id], evidence=False) for u in updates]
        places = s.execute(
            select(RolloutDevice, Rollout.state)
            .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
            .where(RolloutDevice.device_id.in_(ids))  # type: ignore[attr-defined]
            .order_by(RolloutDevice.rollout_id.desc())  # type: ignore[attr-defined]
            .limit(limit)
        ).all()
        return {
            "device": device.id,
            "lineage": [_link(d, sites[d.site_id]) for d in visible],
            "updates": update_rows,
            "rollouts": [
                {
                    "rollout": rd.rollout_id,
                    "rollout_state": state,
                    "device": rd.device_id,
                    "wave": rd.wave,
                    "outcome": rd.state,
                    "reason": rd.reason,
                }
                for rd, state in places
            ],
        }


def _lineage(s: Session, device: Device) -> list[Device]:
    before: list[Device] = []
    seen = {device.id}
    at = device
    while at.replaces and at.replaces not in seen and len(seen) < MAX_CHAIN:
        prev = s.get(Device, at.replaces)
        if prev is None:
            break
        seen.add(prev.id)
        before.append(prev)
        at = prev
    after: list[Device] = []
    at = device
    while at.replaced_by and at.replaced_by not in seen and len(seen) < 2 * MAX_CHAIN:
        nxt = s.get(Device, at.replaced_by)
        if nxt is None:
            break
        seen.add(nxt.id)
        after.append(nxt)
        at = nxt
    return [*reversed(before), device, *after]


def _link(d: Device, site: str) -> dict[str, Any]:
    def iso(v: datetime | None) -> str | None:
        a = aware(v)
        return a.isoformat() if a else None

    return {
        "id": d.id,
        "name": d.name,
        "state": d.state,
        "site": site,
        "serial": d.serial,
        "hardware_id": d.hardware_id,
        "enrolled_at": iso(d.enrolled_at),
        "decommissioned_at": (
            iso(d.state_changed_at) if d.state == DeviceState.decommissioned else None
        ),
        "replaces": d.replaces,
        "replaced_by": d.replaced_by,
    }
