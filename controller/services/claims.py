"""QR claims shown by a device (DESIGN.md "Device lifecycle", way in 2): a device with
no token creates a claim with its CSR; a person who scanned its QR code checks the
confirmation code and approves it with a site and profile; the device, polling with
the claim's secret, then receives exactly what a token enrolment answers.

Choices worth knowing:

- **One pending claim per key.** The same key asking again while its claim is pending
  gets that claim (same id, code and page, same expiry) with a *new* secret, and the
  old secret stops working. The controller keeps only the secret's hash, so it cannot
  hand the old one back; and a device that asks again has lost its answer (a crash, a
  restart), so it holds no usable secret anyway. Asking needs a CSR signed by the
  claim's key; someone replaying a captured CSR could take over the polling, but would
  learn nothing secret: the certificate it would see is useless without the key.
- **Expiry is read, not swept.** A pending claim past ``expires_at`` is expired to
  everyone who looks (and cannot be decided: 409); it is written as such when its key
  asks again, which makes a fresh claim with a new code.
- **Installers.** A pending claim belongs to no site, so every installer sees pending
  (and expired) claims; an installer may approve only into their own site, and sees
  approved claims only of their own site, rejected ones only if they rejected them.
  Anyone who may approve may reject a pending claim (a wrong rejection costs a restart
  of the device's agent and a new scan).
- **The device** is created enrolled, with its certificate, in the approval's
  transaction, exactly as a token enrolment without approval makes it
  (``enrolment.device_row``); its site's repository is written like an enrolment's
  (debounced). The claim row is locked while it is decided, so a double click makes one
  device and the second click is told who approved it.
- **Waking the device.** The deciding transaction announces the claim
  (``claimwake``), so a poll held open in any worker of any replica answers at once.
- **What the device hears** is the state and, once rejected, the reason typed; never who
  decided (the operators' names stay on the controller). The reason lives in the
  rejection's audit record (the claim table has no column for it).
- **Nothing is deleted**: decided and expired claims stay, as a record of who let what
  in; the per-address limit on new claims bounds how fast they accumulate.
"""

from __future__ import annotations

import hmac
import math
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import Field, StringConstraints
from sqlalchemy import and_, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from edgefleet.controller.bearer import hash_secret
from edgefleet.controller.claimwake import announce_committed, announce_within
from edgefleet.controller.db import session_scope
from edgefleet.controller.models import AuditRecord, Claim, Device, Profile, Site, aware
from edgefleet.controller.pki.authority import parse_device_csr
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit
from edgefleet.controller.services.enrolment import answer, device_row
from edgefleet.controller.services.profiles import profile_by_name
from edgefleet.controller.services.sites import site_by_name
from edgefleet.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from edgefleet.wire import (
    ClaimCreated,
    ClaimRequest,
    ClaimState,
    ClaimStatus,
    DeviceState,
    EnrolResponse,
    Inventory,
    Strict,
)

CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
"""No 0/O, 1/I/L or U/V look-alikes: read off a small screen and compared by eye."""
CODE_LENGTH = 6
CONSOLE_PATH = "/console/claims/"
LIST_LIMIT = 500
_DEVICES = Device.__table__  # type: ignore[attr-defined]

LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
LabelValue = Annotated[str, StringConstraints(max_length=256)]


class ClaimApprove(Strict):
    site: str = Field(min_length=1, max_length=128)
    profile: str | None = Field(default=None, min_length=1, max_length=128)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    name: str | None = Field(default=None, min_length=1, max_length=128)
    """What the people at the site call the device ("till-3")."""


class ClaimReject(Strict):
    reason: str = Field(default="", max_length=256)


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def console_url(rt: Runtime, claim_id: str) -> str:
    return rt.settings.effective_public_url.rstrip("/") + CONSOLE_PATH + claim_id


def state_of(claim: Claim, now: datetime) -> ClaimState:
    """The claim's state as everyone sees it: a pending claim past its expiry is expired."""
    expires = aware(claim.expires_at)
    if claim.state == ClaimState.pending and expires is not None and expires <= now:
        return ClaimState.expired
    return ClaimState(claim.state)


# -- the device's side -------------------------------------------------------------------


def create(rt: Runtime, req: ClaimRequest, remote_addr: str) -> ClaimCreated:
    """A new claim for this key, or its pending one with a new secret (see the module)."""
    _csr, key_pin = parse_device_csr(req.csr)
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with session_scope(rt.engine) as s:
        enrolled = s.scalars(
            select(Device.id).where(
                or_(Device.key_pin == key_pin, Device.pending_key_pin == key_pin)
            )
        ).first()
        if enrolled is not None:
            raise Conflict(
                f"this device key is already enrolled as device {enrolled}; the agent lost "
                "its enrolment files: restore them, or delete the agent's state folder "
                "(a new key) and claim again",
                code="key_in_use",
            )
        claim = None
        for old in s.scalars(
            select(Claim).where(Claim.key_pin == key_pin, Claim.state == ClaimState.pending)
        ):
            if state_of(old, now) == ClaimState.expired:
                old.state = ClaimState.expired
            else:
                claim = old
        if claim is None:
            claim = Claim(
                id="clm-" + secrets.token_hex(8),
                secret_hash=hash_secret(secret),
                code=new_code(),
                csr_pem=req.csr,
                key_pin=key_pin,
                inventory=req.inventory.model_dump(mode="json"),
                serial=req.inventory.serial,
                hardware_id=req.inventory.hardware_id,
                created_at=now,
                expires_at=now + timedelta(seconds=rt.settings.claim_ttl_seconds),
                remote_addr=remote_addr[:64],
            )
            s.add(claim)
        else:
            claim.secret_hash = hash_secret(secret)
        expires = aware(claim.expires_at)
        assert expires is not None
        return ClaimCreated(
            id=claim.id,
            secret=secret,
            code=claim.code,
            url=console_url(rt, claim.id),
            expires_at=expires,
            poll_seconds=rt.settings.claim_poll_seconds,
        )


def poll(rt: Runtime, claim_id: str, secret: str) -> ClaimStatus:
    """The claim's state for the device holding its secret; once approved, the enrolment."""
    with Session(rt.engine) as s:
        claim = s.get(Claim, claim_id)
        if claim is None or not hmac.compare_digest(claim.secret_hash, hash_secret(secret)):
            raise Unauthorized(
                f"no claim {claim_id} with this secret (it was asked for again with the "
                "same key, which made a new secret): create the claim again",
                code="claim_secret",
            )
        state = state_of(claim, datetime.now(UTC))
        expires = aware(claim.expires_at)
        assert expires is not None
        status = ClaimStatus(id=claim.id, state=state, expires_at=expires)
        if state == ClaimState.approved and claim.device_id is not None:
            status.enrolment = _enrolment(rt, s, claim.device_id)
            status.message = "approved"
        elif state == ClaimState.rejected:
            reason = _reasons(s, [claim.id]).get(claim.id)
            status.message = "rejected by an operator" + (f": {reason}" if reason else "")
        elif state == ClaimState.expired:
            status.message = "nobody approved this claim in time; make a new one"
        else:
            status.message = "waiting for a person to approve this claim"
        return status


def _enrolment(rt: Runtime, s: Session, device_id: str) -> EnrolResponse:
    """What ``POST /enrol`` would answer this device now."""
    device = s.get(Device, device_id)
    assert device is not None
    profile = s.get(Profile, device.profile_id) if device.profile_id else None
    return answer(
        rt, device.id, device.state, device.certificate_pem, profile.name if profile else None
    )


# -- the operators' side -----------------------------------------------------------------


def list_claims(
    rt: Runtime, who: Operator, state: str | None = None, limit: int = LIST_LIMIT
) -> list[dict[str, Any]]:
    """Newest first; ``state`` as people see it (a pending claim past its expiry is expired)."""
    now = datetime.now(UTC)
    q = _with_names(select(Claim)).order_by(Claim.created_at.desc(), Claim.id).limit(limit)
    if state is not None:
        q = q.where(_in_state(state, now))
    if who.role == Role.installer:
        q = q.where(_seen_by_installer(who))
    with Session(rt.engine) as s:
        rows = s.execute(q).all()
        reasons = _reasons(s, [c.id for c, *_ in rows if c.state == ClaimState.rejected])
    return [public(rt, *row, now=now, reason=reasons.get(row[0].id)) for row in rows]


def get_claim(rt: Runtime, who: Operator, claim_id: str) -> dict[str, Any]:
    """What a person needs to decide: the code to compare, what the device says it is,
    where it asked from, how long it has left; once decided, by whom and what became of it."""
    q = _with_names(select(Claim)).where(Claim.id == claim_id)
    with Session(rt.engine) as s:
        row = s.execute(q).first()
        if row is None or not _visible(who, row[0]):
            raise NotFound(f"no claim {claim_id}", code="unknown_claim")
        reason = _reasons(s, [claim_id]).get(claim_id)
        same = _same_hardware(s, who, row[0])
    return {**public(rt, *row, now=datetime.now(UTC), reason=reason), "same_hardware_id": same}


def _same_hardware(s: Session, who: Operator, claim: Claim) -> list[dict[str, Any]]:
    """Devices already enrolled with the claim's hardware id (a replaced board, a wiped
    disk, or someone else's device): worth a look before approving a second one. An
    installer sees only those of their own site."""
    if not claim.hardware_id:
        return []
    q = (
        select(Device.id, Device.state, Site.name)
        .join(Site, Site.id == Device.site_id)
        .where(Device.hardware_id == claim.hardware_id)
        .order_by(Device.created_at)
    )
    if claim.device_id is not None:
        q = q.where(Device.id != claim.device_id)  # not the device the claim became
    if who.role == Role.installer:
        q = q.where(Device.site_id == who.site_id)
    return [{"id": i, "state": state, "site": site} for i, state, site in s.execute(q)]


def approve(rt: Runtime, who: Operator, claim_id: str, req: ClaimApprove) -> dict[str, Any]:
    """Enrol the claiming device at ``req.site``: created enrolled with its certificate;
    its waiting agent hears of it at once."""
    now = datetime.now(UTC)
    try:
        with session_scope(rt.engine) as s:
            claim = _pending(s, who, claim_id, now, "approved")
            site = site_by_name(s, req.site)
            if not who.may_act_at(site.id):
                raise Forbidden(
                    f"an installer may approve devices into their own site only, not into "
                    f"site {req.site!r}",
                    code="other_site",
                )
            profile = profile_by_name(s, req.profile) if req.profile else None
            csr, _pin = parse_device_csr(claim.csr_pem)
            row = device_row(
                rt,
                site_id=site.id,  # type: ignore[arg-type]
                profile_id=profile.id if profile else None,
                labels=dict(req.labels),
                public_key=csr.public_key(),
                key_pin=claim.key_pin,
                inventory=Inventory.model_validate(claim.inventory),
                enrolled=True,
                name=req.name,
                decided_by=who.username,
            )
            s.execute(insert(_DEVICES), row)
            claim.state = ClaimState.approved
            claim.site_id, claim.profile_id = site.id, row["profile_id"]
            claim.labels, claim.device_id = row["labels"], row["id"]
            claim.decided_by, claim.decided_at = who.username, now
            audit.record(
                s,
                who,
                "claim.approve",
                claim.id,
                code=claim.code,
                device=row["id"],
                site=site.name,
                profile=profile.name if profile else None,
            )
            announce_within(s, claim.id)
            out = public(rt, claim, site.name, req.profile, req.name, now=now)
    except IntegrityError as exc:
        raise Conflict(
            f"the key of claim {claim_id} was enrolled by another way meanwhile (a token, or "
            "a second claim of the same device); nothing was changed",
            code="key_in_use",
        ) from exc
    announce_committed(rt.engine, claim_id)
    why = f"{who.username} approved claim {claim_id}: device {out['device_id']}"
    rt.gitops.queue([out["site"]], "enrolment", why)
    rt.metrics.enrolments.labels(outcome=DeviceState.enrolled.value).inc()
    return out


def reject(rt: Runtime, who: Operator, claim_id: str, reason: str = "") -> dict[str, Any]:
    """The device is told (with ``reason``) and its agent stops."""
    now = datetime.now(UTC)
    with session_scope(rt.engine) as s:
        claim = _pending(s, who, claim_id, now, "rejected")
        claim.state = ClaimState.rejected
        claim.decided_by, claim.decided_at = who.username, now
        audit.record(s, who, "claim.reject", claim.id, code=claim.code, reason=reason)
        announce_within(s, claim.id)
        out = public(rt, claim, None, None, None, now=now, reason=reason)
    announce_committed(rt.engine, claim_id)
    return out


def _pending(s: Session, who: Operator, claim_id: str, now: datetime, verb: str) -> Claim:
    """The claim, locked, if it may still be decided; 409 saying why not otherwise."""
    claim = s.get(Claim, claim_id, with_for_update=True)
    if claim is None or not _visible(who, claim):
        raise NotFound(f"no claim {claim_id}", code="unknown_claim")
    state = state_of(claim, now)
    if state == ClaimState.expired:
        expired = aware(claim.expires_at)
        assert expired is not None
        raise Conflict(
            f"claim {claim_id} expired at {expired.isoformat(timespec='seconds')} and cannot "
            f"be {verb}; the device shows a new code once it notices: scan that one",
            code="claim_expired",
        )
    if state != ClaimState.pending:
        decided = aware(claim.decided_at)
        when = decided.isoformat(timespec="seconds") if decided else "?"
        became = f": it is device {claim.device_id}" if claim.device_id else ""
        raise Conflict(
            f"claim {claim_id} was already {state.value} by {claim.decided_by} at {when}{became}",
            code="claim_decided",
        )
    return claim


# -- who sees what, and how it reads -------------------------------------------------------


def _with_names(q: Any) -> Any:
    return (
        q.add_columns(Site.name, Profile.name, Device.name)
        .outerjoin(Site, Site.id == Claim.site_id)
        .outerjoin(Profile, Profile.id == Claim.profile_id)
        .outerjoin(Device, Device.id == Claim.device_id)
    )


def _visible(who: Operator, claim: Claim) -> bool:
    if who.role != Role.installer:
        return True
    if claim.site_id is not None:
        return claim.site_id == who.site_id
    if claim.state == ClaimState.rejected:
        return claim.decided_by == who.username
    return True  # pending or expired: it belongs to no site yet


def _seen_by_installer(who: Operator) -> Any:
    """``_visible`` as a WHERE clause."""
    return or_(
        Claim.site_id == who.site_id,
        and_(Claim.site_id.is_(None), Claim.state != ClaimState.rejected),  # type: ignore[union-attr]
        and_(Claim.state == ClaimState.rejected, Claim.decided_by == who.username),
    )


def _in_state(state: str, now: datetime) -> Any:
    if state not in ClaimState.__members__:
        raise BadRequest(
            f"unknown claim state {state!r}; one of {', '.join(ClaimState)}", code="bad_state"
        )
    pending = Claim.state == ClaimState.pending
    if state == ClaimState.pending:
        return and_(pending, Claim.expires_at > now)
    if state == ClaimState.expired:
        return or_(Claim.state == ClaimState.expired, and_(pending, Claim.expires_at <= now))
    return Claim.state == state


def _reasons(s: Session, claim_ids: list[str]) -> dict[str, str]:
    """The reasons given for rejecting these claims (kept in their audit records)."""
    if not claim_ids:
        return {}
    q = select(AuditRecord.target, AuditRecord.detail).where(
        AuditRecord.action == "claim.reject",
        AuditRecord.target.in_(claim_ids),  # type: ignore[attr-defined]
    )
    return {target: (detail or {}).get("reason", "") for target, detail in s.execute(q)}


def public(
    rt: Runtime,
    claim: Claim,
    site: str | None,
    profile: str | None,
    device_name: str | None,
    *,
    now: datetime,
    reason: str | None = None,
) -> dict[str, Any]:
    state = state_of(claim, now)
    created, expires = aware(claim.created_at), aware(claim.expires_at)
    decided = aware(claim.decided_at)
    assert created is not None and expires is not None
    inventory = claim.inventory or {}
    return {
        "id": claim.id,
        "code": claim.code,
        "state": state.value,
        "url": console_url(rt, claim.id),
        "serial": claim.serial,
        "hardware_id": claim.hardware_id,
        "hostname": inventory.get("hostname"),
        "model": (inventory.get("extra") or {}).get("model"),
        "inventory": inventory,
        "remote_addr": claim.remote_addr,
        "created_at": created.isoformat(),
        "age_seconds": round((now - created).total_seconds(), 1),
        "expires_at": expires.isoformat(),
        "expires_in_seconds": (
            # rounded down: never more time than is left (3599.96 s reads 59m, not 1h)
            math.floor((expires - now).total_seconds() * 10) / 10
            if state == ClaimState.pending
            else None
        ),
        "site": site,
        "profile": profile,
        "labels": claim.labels,
        "name": device_name,
        "decided_by": claim.decided_by,
        "decided_at": decided.isoformat() if decided else None,
        "device_id": claim.device_id,
        "reason": reason if state == ClaimState.rejected else None,
    }
