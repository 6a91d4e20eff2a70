"""Operator actions on devices: list (and search), show, approve, reject, decommission,
assign, rename. Hardware replacement builds on these in ``replacement.py``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, or_, select
from sqlmodel import Session

from edgefleet.controller import lifecycle
from edgefleet.controller.buffers import lag_of
from edgefleet.controller.db import reading, session_scope
from edgefleet.controller.models import Device, Profile, Site, aware
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit
from edgefleet.controller.services.enrolment import certificate_fields
from edgefleet.controller.services.profiles import profile_by_name, revision_or_404
from edgefleet.errors import BadRequest, Conflict, NotFound
from edgefleet.labels import parse_labels
from edgefleet.wire import DeviceState


def public(
    device: Device, site: str, profile: str | None, now: datetime | None = None
) -> dict[str, Any]:
    seen = aware(device.last_seen_at)
    return {
        "id": device.id,
        "name": device.name,
        "state": device.state,
        "site": site,
        "profile": profile,
        "profile_revision": device.profile_revision,
        "labels": device.labels,
        "serial": device.serial,
        "hardware_id": device.hardware_id,
        "applied_revision": device.applied_revision,
        "update_retries": device.update_retries,
        "last_seen_at": seen.isoformat() if seen else None,
        "enrolled_at": aware(device.enrolled_at).isoformat() if device.enrolled_at else None,
        "certificate_not_after": (
            aware(device.certificate_not_after).isoformat()
            if device.certificate_not_after
            else None
        ),
        "rekey_pending": device.pending_key_pin is not None,
        "inventory": device.inventory,
        "status": device.status,
        # Hardware replacement: whose place this device took, and who took its place.
        "replaces": device.replaces,
        "replaced_by": device.replaced_by,
        # The A/B slots and the last update as the device last reported them (issue 7);
        # the evidence of that update is in GET /updates?device=ID.
        "slots": device.status.get("slots", []),
        "active_slot": device.status.get("active_slot"),
        "last_update": device.status.get("last_update"),
        **buffer_fields(device, seen, now or datetime.now(UTC)),
    }


def buffer_fields(device: Device, seen: datetime | None, now: datetime) -> dict[str, Any]:
    """The device's result buffer as it last reported it, and the lag: how old the oldest
    result the controller does not hold yet is now (``controller.buffers.lag_of``). None
    where the device never reported a status, or was decommissioned (it sends no more)."""
    buffer = (device.status or {}).get("buffer")
    if not isinstance(buffer, dict) or seen is None:
        return {"result_lag_seconds": None, "buffer_depth": None, "buffer_drops": {}}
    lag: float | None = round(lag_of(device.status, seen, now), 1)
    if device.state == DeviceState.decommissioned:
        lag = None
    return {
        "result_lag_seconds": lag,
        "buffer_depth": int(buffer.get("depth") or 0),
        "buffer_drops": {str(k): int(v) for k, v in (buffer.get("drops") or {}).items()},
    }


def list_devices(
    rt: Runtime,
    who: Operator,
    *,
    site: str | None = None,
    state: str | None = None,
    labels: list[str] | None = None,
    limit: int = 1000,
    offset: int = 0,
    query: str | None = None,
) -> list[dict[str, Any]]:
    """A page of devices in enrolment order. Every filter and the page are the
    database's work (Core rows, no ORM objects), so a search box over 10,000 devices
    answers in milliseconds (bench/device_list.py). ``query`` is what a person types:
    an id prefix (with or without ``dev-``), or part of a name, serial or hostname."""
    q = (
        select(*_DEVICE_COLUMNS, Site.name.label("site_name"), Profile.name.label("profile_name"))  # type: ignore[attr-defined]
        .select_from(_DEVICES)
        .join(Site, Site.id == _DEVICES.c.site_id)
        .outerjoin(Profile, Profile.id == _DEVICES.c.profile_id)
        .order_by(_DEVICES.c.created_at, _DEVICES.c.id)
        .limit(limit)
        .offset(offset)
    )
    q = _filtered(q, who, site=site, state=state, labels=labels, query=query)
    with reading(rt.engine) as conn:
        rows = conn.execute(q).all()
    now = datetime.now(UTC)
    return [public(row, row.site_name, row.profile_name, now) for row in rows]  # type: ignore[arg-type]


def count_devices(
    rt: Runtime,
    who: Operator,
    *,
    site: str | None = None,
    state: str | None = None,
    labels: list[str] | None = None,
    query: str | None = None,
) -> int:
    """How many devices ``list_devices`` pages through with the same filters."""
    q = select(func.count()).select_from(_DEVICES).join(Site, Site.id == _DEVICES.c.site_id)
    q = _filtered(q, who, site=site, state=state, labels=labels, query=query)
    with reading(rt.engine) as conn:
        return int(conn.execute(q).scalar_one())


def page_of_devices(
    rt: Runtime,
    who: Operator,
    *,
    limit: int,
    offset: int = 0,
    **filters: Any,
) -> tuple[list[dict[str, Any]], int]:
    """A page of ``list_devices`` and how many devices the filters match in all; the
    count is a second query only when the page does not already say it."""
    rows = list_devices(rt, who, limit=limit, offset=offset, **filters)
    if offset == 0 and len(rows) < limit:
        return rows, len(rows)  # the whole answer: no count needed
    return rows, count_devices(rt, who, **filters)


_DEVICES = Device.__table__  # type: ignore[attr-defined]
_DEVICE_COLUMNS = [c for c in _DEVICES.c if c.name not in ("public_key_pem", "certificate_pem")]
"""What ``public`` reads; the PEMs are the widest columns and a list shows neither."""


def _filtered(
    q: Any,
    who: Operator,
    *,
    site: str | None,
    state: str | None,
    labels: list[str] | None,
    query: str | None,
) -> Any:
    wanted = parse_labels(labels or [])
    if state is not None and state not in DeviceState.__members__:
        raise BadRequest(
            f"unknown state {state!r}; one of {', '.join(DeviceState)}", code="bad_state"
        )
    d = _DEVICES.c
    if who.role == Role.installer:
        q = q.where(d.site_id == who.site_id)
    if site is not None:
        q = q.where(Site.name == site)
    if state is not None:
        q = q.where(d.state == state)
    for key, value in wanted.items():
        q = q.where(d.labels[key].as_string() == value)
    text = (query or "").strip()
    if text:
        part = "%" + _literal(text) + "%"
        q = q.where(
            or_(
                d.id.like(_literal(text.lower()) + "%", escape="\\"),
                d.id.like("dev-" + _literal(text.lower()) + "%", escape="\\"),
                d.name.ilike(part, escape="\\"),
                d.serial.ilike(part, escape="\\"),
                d.inventory["hostname"].as_string().ilike(part, escape="\\"),
            )
        )
    return q


def _literal(text: str) -> str:
    """``text`` matched as typed: LIKE's wildcards escaped. ILIKE on PostgreSQL (not
    lower() on both sides, which costs three times as much there)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def get_device(rt: Runtime, who: Operator, device_id: str) -> dict[str, Any]:
    with Session(rt.engine) as s:
        device = _load(s, who, device_id)
        return _public_of(s, device)


def _load(s: Session, who: Operator, device_id: str, lock: bool = False) -> Device:
    device = s.get(Device, device_id, with_for_update=lock)
    if device is None or not who.may_act_at(device.site_id):
        raise NotFound(f"no device {device_id}", code="unknown_device")
    return device


def _load_serving(s: Session, who: Operator, device_id: str, refusal: str) -> Device:
    """The device, locked, unless it was decommissioned (409 ending with ``refusal``)."""
    device = _load(s, who, device_id, lock=True)
    if device.state == DeviceState.decommissioned:
        raise Conflict(
            f"device {device_id} was decommissioned; {refusal}", code="invalid_transition"
        )
    return device


def _public_of(s: Session, device: Device) -> dict[str, Any]:
    site = s.get(Site, device.site_id)
    profile = s.get(Profile, device.profile_id) if device.profile_id else None
    return public(device, site.name if site else "", profile.name if profile else None)


def _move(device: Device, target: DeviceState) -> None:
    lifecycle.check(DeviceState(device.state), target)
    device.state = target
    device.state_changed_at = datetime.now(UTC)


def approve(rt: Runtime, who: Operator, device_id: str) -> dict[str, Any]:
    """Enrol a device awaiting approval, or give a known device the new key it waits with."""
    with rt.gitops.change(who.username) as change:
        with session_scope(rt.engine) as s:
            device = _load(s, who, device_id, lock=True)
            if device.pending_key_pin is not None:
                _adopt_pending_key(rt, device)
                audit.record(s, who, "device.rekey.approve", device.id)
            elif device.state == DeviceState.awaiting_approval:
                _move(device, DeviceState.enrolled)
                key = serialization.load_pem_public_key(device.public_key_pem.encode())
                for column, value in certificate_fields(rt, device.id, key).items():
                    setattr(device, column, value)
                device.enrolled_at = datetime.now(UTC)
                device.decided_by = who.username
                audit.record(s, who, "device.approve", device.id)
                change.why = f"{who.username} approved device {device_id}"
                # Imported here: replacement builds on this module.
                from edgefleet.controller.services.replacement import at_approval

                took = at_approval(s, who, device)
                if took is not None:
                    change.title, change.why = took.title, took.why
            else:
                raise Conflict(
                    f"device {device_id} is {device.state} and waits for nothing; only a "
                    "device awaiting approval (or with a new key waiting) can be approved",
                    code="invalid_transition",
                )
            out = _public_of(s, device)
        rt.changed()
        if change.why:
            change.sites = {out["site"]}
    if change.why:
        out["gitops"] = change.outcome.public()
    return out


def _adopt_pending_key(rt: Runtime, device: Device) -> None:
    """The device lost its key: the one waiting replaces it; old credentials stop."""
    assert device.pending_key_pin is not None and device.pending_key_pem is not None
    device.key_pin, device.public_key_pem = device.pending_key_pin, device.pending_key_pem
    device.pending_key_pin = device.pending_key_pem = None
    key = serialization.load_pem_public_key(device.public_key_pem.encode())
    for column, value in certificate_fields(rt, device.id, key).items():
        setattr(device, column, value)
    device.credential_generation += 1


def reject(rt: Runtime, who: Operator, device_id: str) -> dict[str, Any]:
    with session_scope(rt.engine) as s:
        device = _load(s, who, device_id, lock=True)
        if device.pending_key_pin is not None:
            device.pending_key_pin = device.pending_key_pem = None
            audit.record(s, who, "device.rekey.reject", device.id)
        else:
            _move(device, DeviceState.rejected)
            device.decided_by = who.username
            audit.record(s, who, "device.reject", device.id)
        out = _public_of(s, device)
    rt.changed()
    return out


def decommission(rt: Runtime, who: Operator, device_id: str) -> dict[str, Any]:
    """Credentials stop working at once: the generation moves and every cache drops."""
    with rt.gitops.change(who.username) as change:
        with session_scope(rt.engine) as s:
            device = _load(s, who, device_id, lock=True)
            retire(s, who, device)
            out = _public_of(s, device)
        rt.changed()
        change.why = f"{who.username} decommissioned device {device_id}"
        change.sites = {out["site"]}
    out["gitops"] = change.outcome.public()
    return out


def retire(s: Session, who: Operator, device: Device, **detail: Any) -> None:
    """Decommission ``device`` in the caller's transaction (a hardware replacement's too):
    the generation moves, so once the caller commits and calls ``rt.changed()`` every
    replica refuses the device's tokens."""
    _move(device, DeviceState.decommissioned)
    device.credential_generation += 1
    audit.record(s, who, "device.decommission", device.id, **detail)


def rename(rt: Runtime, who: Operator, device_id: str, name: str | None) -> dict[str, Any]:
    """Name a device as the people at its site call it (None clears it). Names are unique
    per site among devices not decommissioned, ignoring case, so "till-3" finds one
    device; a decommissioned device keeps its name in its record."""
    name = (name or "").strip() or None
    with session_scope(rt.engine) as s:
        device = _load_serving(s, who, device_id, "it keeps the name it had")
        if name is not None:
            check_name_free(s, device.site_id, name, device.id)
        previous, device.name = device.name, name
        audit.record(s, who, "device.rename", device.id, name=name, previous=previous)
        out = _public_of(s, device)
    return out


def check_name_free(s: Session, site_id: int, name: str, device_id: str) -> None:
    """Refuse a name another serving device at the site has (case-insensitively). The
    site's row is locked first, so two operators naming two devices alike at once on
    PostgreSQL queue here (SQLite's writers queue anyway)."""
    if not name.isprintable() or len(name) > 128:
        raise BadRequest(
            f"a device name is up to 128 printable characters, not {name[:40]!r}",
            code="bad_name",
        )
    s.get(Site, site_id, with_for_update=True)
    holder = s.scalars(
        select(Device.id).where(
            Device.site_id == site_id,
            func.lower(Device.name) == name.lower(),
            Device.state != DeviceState.decommissioned,
            Device.id != device_id,
        )
    ).first()
    if holder is not None:
        raise Conflict(
            f"device {holder} at this site is already called {name!r}; rename it first, "
            "or pick another name",
            code="name_taken",
        )


def assign(
    rt: Runtime, who: Operator, device_id: str, profile_name: str, revision: int | None = None
) -> dict[str, Any]:
    """Give a device a profile: its latest revision, or ``revision`` pinned. The desired
    state (and ETag) changes at once and the fleet repository gets one commit."""
    with rt.gitops.change(who.username) as change:
        with session_scope(rt.engine) as s:
            device = _load_serving(s, who, device_id, "it takes no profile")
            profile = profile_by_name(s, profile_name)
            if revision is not None:
                revision_or_404(s, profile, revision)
            before = s.get(Profile, device.profile_id) if device.profile_id else None
            was = _label(before.name if before else None, device.profile_revision)
            device.profile_id, device.profile_revision = profile.id, revision
            audit.record(
                s,
                who,
                "device.assign",
                device.id,
                profile=profile.name,
                previous=before.name if before else None,
                **({"revision": revision} if revision else {}),
            )
            out = _public_of(s, device)
        rt.changed()
        change.why = f"{who.username} assigned {_label(profile.name, revision)} (was {was})"
        change.sites = {out["site"]}
    out["gitops"] = change.outcome.public()
    return out


def _label(profile: str | None, revision: int | None) -> str:
    if profile is None:
        return "no profile"
    return f"profile {profile}" + (f" revision {revision}" if revision else " (latest)")


def retry_update(rt: Runtime, who: Operator, device_id: str) -> dict[str, Any]:
    """Let the device try its desired revision again where a slot failed it (a fix outside
    the model, such as a camera reconnected, may make it pass now)."""
    with session_scope(rt.engine) as s:
        device = _load_serving(s, who, device_id, "it runs no updates")
        device.update_retries += 1
        audit.record(s, who, "device.update.retry", device.id, retries=device.update_retries)
        out = _public_of(s, device)
    rt.changed()
    return out
