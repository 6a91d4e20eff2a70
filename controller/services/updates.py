"""Update reports: each device says how an update attempt ended and why, with the
evidence of a rollback; operators list and read them.

A report is named by (device, revision, started_at): a device that lost the answer to
its upload sends the same report again and gets the same record back, so the outbox on
the device can resend without fear of duplicates.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.models import Device, Site, UpdateRecord, aware
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.runtime import Runtime
from edgefleet.errors import BadRequest, NotFound
from edgefleet.wire import UpdateAck, UpdateReport, UpdateResult


def store(rt: Runtime, device_id: str, report: UpdateReport) -> UpdateAck:
    """Keep the report unless this attempt is already on record; either way, its id."""
    outcome = report.outcome
    started = outcome.started_at.astimezone(UTC)
    try:
        with session_scope(rt.engine) as s:
            known = _find(s, device_id, outcome.revision, started)
            if known is not None:
                return UpdateAck(id=known, created=False)
            row = UpdateRecord(
                device_id=device_id,
                revision=outcome.revision,
                outcome=outcome.outcome.value,
                slot=outcome.slot,
                reason=outcome.reason,
                started_at=started,
                finished_at=outcome.finished_at.astimezone(UTC),
                evidence=report.evidence.model_dump(mode="json"),
            )
            s.add(row)
            s.flush()
            assert row.id is not None
            return UpdateAck(id=row.id, created=True)
    except IntegrityError:
        # The same report, uploaded twice at once (two replicas): the other one won.
        with Session(rt.engine) as s:
            known = _find(s, device_id, outcome.revision, started)
        if known is None:
            raise
        return UpdateAck(id=known, created=False)


def _find(s: Session, device_id: str, revision: int, started: Any) -> int | None:
    return s.scalars(
        select(UpdateRecord.id).where(
            UpdateRecord.device_id == device_id,
            UpdateRecord.revision == revision,
            UpdateRecord.started_at == started,
        )
    ).first()


def list_updates(
    rt: Runtime,
    who: Operator,
    *,
    device: str | None = None,
    outcome: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest reports first, without their evidence (``show`` has it)."""
    if outcome is not None and outcome not in UpdateResult.__members__:
        raise BadRequest(
            f"unknown outcome {outcome!r}; one of {', '.join(UpdateResult)}", code="bad_outcome"
        )
    q = (
        select(UpdateRecord, Device.site_id, Site.name)
        .join(Device, Device.id == UpdateRecord.device_id)
        .join(Site, Site.id == Device.site_id)
        .order_by(UpdateRecord.received_at.desc(), UpdateRecord.id.desc())  # type: ignore[union-attr]
    )
    if device is not None:
        q = q.where(UpdateRecord.device_id == device)
    if outcome is not None:
        q = q.where(UpdateRecord.outcome == outcome)
    if who.role == Role.installer:
        q = q.where(Device.site_id == who.site_id)
    with Session(rt.engine) as s:
        rows = s.execute(q.limit(limit)).all()
    return [_public(row, site, evidence=False) for row, _site_id, site in rows]


def get_update(rt: Runtime, who: Operator, update_id: int) -> dict[str, Any]:
    with Session(rt.engine) as s:
        found = s.execute(
            select(UpdateRecord, Device.site_id, Site.name)
            .join(Device, Device.id == UpdateRecord.device_id)
            .join(Site, Site.id == Device.site_id)
            .where(UpdateRecord.id == update_id)
        ).first()
    if found is None or not who.may_act_at(found[1]):
        raise NotFound(f"no update report {update_id}", code="unknown_update")
    return _public(found[0], found[2], evidence=True)


def _public(row: UpdateRecord, site: str, *, evidence: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "device": row.device_id,
        "site": site,
        "revision": row.revision,
        "outcome": row.outcome,
        "slot": row.slot,
        "reason": row.reason,
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "received_at": _iso(row.received_at),
    }
    if evidence:
        out["evidence"] = row.evidence
    return out


def _iso(value: Any) -> str | None:
    dt = aware(value)
    return dt.isoformat() if dt else None
