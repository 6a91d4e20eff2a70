"""``POST /devices/{id}/status``: store what changed, move the lifecycle, note last seen.

A report equal to the last one (a heartbeat) touches only the in-memory last-seen
map and status history (``status_samples.py``), written behind in batches; a changed
report is one transaction, which also stores the outcome a rollout waits for from this
device (``rollouts/watch.py``). A report another worker (or this one before a restart)
already stored costs a read, not a commit: each worker learns a device's report once. So
does the report after the first, which repeats it without the inventory an agent sends
once: a fleet's return would otherwise write every device twice.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, select

from edgefleet.controller import lifecycle
from edgefleet.controller.db import reading, session_scope
from edgefleet.controller.models import Device
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import drift, shadow
from edgefleet.controller.status_samples import values_of
from edgefleet.errors import NotFound
from edgefleet.wire import DeviceState, StatusAck, StatusReport

_D = Device.__table__  # type: ignore[attr-defined]


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def heartbeat(rt: Runtime, device_id: str, report_digest: str) -> DeviceState | None:
    """If the report is unchanged, note the device seen and return its state; else None."""
    known = rt.status_digests.get(device_id)
    if known is None or known[0] != report_digest:
        return None
    rt.last_seen.touch(device_id)
    rt.status_samples.seen(device_id)
    return known[1]


def store(rt: Runtime, device_id: str, report: StatusReport, report_digest: str) -> DeviceState:
    stored = _stored(rt, device_id)
    kept = None if stored.status_digest == report_digest else _kept(report)
    if kept is None or (report.inventory is None and stored.status == kept):
        # known already; or the report after the inventory one, which an agent sends once
        target = DeviceState(stored.state)
        rt.last_seen.touch(device_id)
    else:
        target = _write(rt, device_id, report, report_digest, kept)
    if report.drift:  # each window once in a while: a heartbeat never gets here
        drift.record(rt, device_id, report.drift)
    if report.shadow:  # likewise: a report without agreement windows costs nothing more
        shadow.record(rt, device_id, report.shadow)
    rt.status_digests[device_id] = (report_digest, target)
    rt.status_samples.record(device_id, values_of(report, target, stored.site_id))
    return target


def _stored(rt: Runtime, device_id: str) -> Row:
    with reading(rt.engine) as conn:
        row = conn.execute(
            select(_D.c.state, _D.c.site_id, _D.c.status_digest, _D.c.status).where(
                _D.c.id == device_id
            )
        ).first()
    if row is None:
        raise NotFound(f"no device {device_id}")
    return row


def _kept(report: StatusReport) -> dict[str, Any]:
    """What the device row keeps of a report (inventory, drift and shadow windows are
    stored apart)."""
    return report.model_dump(mode="json", exclude={"inventory", "drift", "shadow"})


def _write(
    rt: Runtime, device_id: str, report: StatusReport, report_digest: str, kept: dict[str, Any]
) -> DeviceState:
    now = datetime.now(UTC)
    news = None
    with session_scope(rt.engine) as s:
        device = s.get(Device, device_id, with_for_update=True)
        if device is None:
            raise NotFound(f"no device {device_id}")
        current = DeviceState(device.state)
        target = current
        if device.status_digest != report_digest:
            target = lifecycle.state_after_status(current, report)
            device.status = kept
            device.status_digest = report_digest
            device.applied_revision = report.applied_revision
            if report.inventory is not None:
                device.inventory = report.inventory.model_dump(mode="json")
            if target != current:
                device.state = target
                device.state_changed_at = now
            news = rt.watch.observe(s, device_id, device.status)
            if news:
                rt.nudge.within(s, news)
        device.last_seen_at = now
    if news:
        rt.nudge.after(news)
    return target


def ack(rt: Runtime, device_id: str, state: DeviceState) -> StatusAck:
    desired = rt.desired(device_id)
    return StatusAck(
        state=state,
        desired_etag=desired.etag,
        interval_seconds=desired.interval_seconds,
    )
