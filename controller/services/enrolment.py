"""Enrolment: a registration token, a CSR and an inventory become a device.

Idempotent per key: the device's key pin is unique, so a retried enrolment with
the same key (a lost response, a controller killed mid-request) finds the same
device and spends no further token use. The token's use is counted with one
conditional UPDATE in the same transaction as the device insert.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from edgefleet.controller import bearer
from edgefleet.controller.db import reading, writing
from edgefleet.controller.models import Device, Profile, RegistrationToken, Site, aware
from edgefleet.controller.pki.authority import parse_device_csr
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import rekey
from edgefleet.controller.services.enrolment_codes import code_hash
from edgefleet.enrolcode import (
    CODE_ALPHABET,
    CODE_LENGTH,
    is_code_credential,
    parse_code_credential,
)
from edgefleet.errors import Conflict, Forbidden, Gone, Unauthorized
from edgefleet.wire import DeviceState, EnrolRequest, EnrolResponse, Inventory


def new_device_id() -> str:
    return "dev-" + secrets.token_hex(8)


_DEVICES = Device.__table__  # type: ignore[attr-defined]
_TOKENS = RegistrationToken.__table__  # type: ignore[attr-defined]
_SITES = Site.__table__  # type: ignore[attr-defined]

_SPEND_USE = (
    update(_TOKENS)
    .where(
        _TOKENS.c.id == bindparam("tid"),
        _TOKENS.c.revoked_at.is_(None),
        or_(_TOKENS.c.max_uses.is_(None), _TOKENS.c.uses < _TOKENS.c.max_uses),
        or_(_TOKENS.c.expires_at.is_(None), _TOKENS.c.expires_at > bindparam("now")),
    )
    .values(uses=_TOKENS.c.uses + 1)
)
"""Spends one use, atomically: two agents racing for the last use cannot both win."""

_RELATED = select(
    _DEVICES.c.id,
    _DEVICES.c.state,
    _DEVICES.c.site_id,
    _DEVICES.c.key_pin,
    _DEVICES.c.pending_key_pin,
).where(
    or_(
        _DEVICES.c.key_pin == bindparam("pin"),
        _DEVICES.c.pending_key_pin == bindparam("pin"),
        _DEVICES.c.hardware_id == bindparam("hw"),
    )
)
"""Devices holding this key (enrolled or waiting) or this hardware id, in one round trip."""


def _token_by(column: Any) -> Any:
    return (
        select(
            _TOKENS,
            Profile.__table__.c.name.label("profile_name"),  # type: ignore[attr-defined]
            _SITES.c.name.label("site_name"),
        )
        .outerjoin(Profile.__table__, Profile.__table__.c.id == _TOKENS.c.profile_id)  # type: ignore[attr-defined]
        .join(_SITES, _SITES.c.id == _TOKENS.c.site_id)
        .where(column == bindparam("key"))
    )


_TOKEN_BY_KID = _token_by(_TOKENS.c.kid)
_TOKEN_BY_CODE = _token_by(_TOKENS.c.code_hash)


@dataclass(frozen=True, slots=True)
class _Credential:
    """What an enrol request presents, resolved to the registration token it opens: the
    token itself (``efr.<kid>.<secret>``, looked up by key id) or the code of a QR label
    (``efq.<CODE>``, looked up by its hash). Either then meets the token's own checks."""

    key: str
    """The key id, or the code's hash."""
    secret: bearer.BearerSecret | None = None

    @property
    def lookup(self) -> Any:
        return _TOKEN_BY_KID if self.secret is not None else _TOKEN_BY_CODE

    @property
    def what(self) -> str:
        return "registration token" if self.secret is not None else "enrolment code"

    def opens(self, token: Any) -> bool:
        if self.secret is not None:
            return token.kid == self.secret.kid and bearer.matches(self.secret, token.secret_hash)
        return token.code_hash is not None and hmac.compare_digest(token.code_hash, self.key)


def _credential(value: str) -> _Credential:
    if is_code_credential(value):
        code = parse_code_credential(value)
        if code is None:
            raise Unauthorized(
                f"the enrolment code is malformed: it must be efq. and {CODE_LENGTH} "
                f"characters of {CODE_ALPHABET}; scan the label again",
                code="token_invalid",
            )
        return _Credential(code_hash(code))
    secret = bearer.parse_secret(value, bearer.REGISTRATION)
    if secret is None:
        raise Unauthorized(
            "the registration token is malformed; copy it again from `edgefleet tokens create`",
            code="token_invalid",
        )
    return _Credential(secret.kid, secret)


def enrol(rt: Runtime, req: EnrolRequest) -> EnrolResponse:
    cred = _credential(req.token)
    csr, key_pin = parse_device_csr(req.csr)
    with reading(rt.engine) as conn:
        related = conn.execute(_RELATED, {"pin": key_pin, "hw": req.inventory.hardware_id}).all()
        known = any(key_pin in (r.key_pin, r.pending_key_pin) for r in related)
        token = None if known else conn.execute(cred.lookup, {"key": cred.key}).first()
    if known:
        return _again_by_pin(rt, key_pin, cred)
    _check_token(token, cred, req.inventory)
    assert token is not None
    holder = rekey.holder(related, token.site_id)
    if holder is not None and holder != token.replaces:
        return rekey.claim(rt, holder, token, csr.public_key(), key_pin)
    # The certificate is signed outside the write transaction, so the database holds its
    # (single, on SQLite) writer lock only for the two statements below.
    row = device_row(
        rt,
        site_id=token.site_id,
        profile_id=token.profile_id,
        labels=dict(token.labels),
        public_key=csr.public_key(),
        key_pin=key_pin,
        inventory=req.inventory,
        enrolled=not token.require_approval,
        token_id=token.id,
    )
    # A token in replacement mode hands an old device's place over in this transaction.
    from edgefleet.controller.services.replacement import on_enrolment  # (imports us)

    try:
        with on_enrolment(rt, token, row) as hook, writing(rt.engine) as conn:
            conn.execute(insert(_DEVICES), row)
            # Only a limited token counts its uses: its row is a lock every enrolment
            # with it queues on (held from here to the commit). An unlimited token's
            # uses are its devices, counted when listed.
            limited = token.max_uses is not None
            params = {"tid": token.id, "now": datetime.now(UTC)}
            if limited and conn.execute(_SPEND_USE, params).rowcount != 1:
                raise Gone(
                    f"registration token {token.kid} was used up, revoked or expired just now",
                    code="token_exhausted",
                )
            hook(conn)
    except IntegrityError:
        # The same key raced itself (two retries in flight): the winner's row is there now.
        return _again_by_pin(rt, key_pin, cred)
    if row["state"] == DeviceState.enrolled and hook.took is None:
        why = f"device {row['id']} enrolled with token {token.kid}"
        rt.gitops.queue([token.site_name], "enrolment", why)
    return answer(rt, row["id"], row["state"], row["certificate_pem"], hook.profile)


def _check_token(token: Row[Any] | None, cred: _Credential, inventory: Inventory) -> None:
    """Refuse a token that cannot enrol this device, saying why; the use is spent later."""
    if token is None or not cred.opens(token):
        raise Unauthorized(
            f"the {cred.what} is not known to this controller (tampered, or for another "
            "controller)",
            code="token_invalid",
        )
    now = datetime.now(UTC)
    if token.revoked_at is not None:
        raise Gone(
            f"registration token {token.kid} was revoked; issue a new one", code="token_revoked"
        )
    expires = aware(token.expires_at)
    if expires is not None and expires <= now:
        raise Gone(
            f"registration token {token.kid} expired at {expires.isoformat()}; issue a new one",
            code="token_expired",
        )
    if token.max_uses is not None and token.uses >= token.max_uses:
        raise Gone(
            f"registration token {token.kid} has been used {token.uses} of {token.max_uses} "
            "times; issue a new one or raise its limit",
            code="token_exhausted",
        )
    if token.allowed_serials and inventory.serial not in token.allowed_serials:
        raise Forbidden(
            f"serial number {inventory.serial!r} is not on registration token {token.kid}'s "
            "allow-list",
            code="not_allowed",
        )
    if token.allowed_hardware_ids and inventory.hardware_id not in token.allowed_hardware_ids:
        raise Forbidden(
            f"hardware id {inventory.hardware_id!r} is not on registration token {token.kid}'s "
            "allow-list",
            code="not_allowed",
        )


def device_row(
    rt: Runtime,
    *,
    site_id: int,
    profile_id: int | None,
    labels: dict[str, str],
    public_key: object,
    key_pin: str,
    inventory: Inventory,
    enrolled: bool,
    token_id: int | None = None,
    name: str | None = None,
    decided_by: str | None = None,
) -> dict[str, Any]:
    """A new device's row, as every way in makes it (a token, a QR code, a claim shown by
    the device): ``enrolled`` with its certificate signed now, or awaiting approval. A
    plain dict: building an ORM object costs more than the insert."""
    now = datetime.now(UTC)
    device_id = new_device_id()
    row: dict[str, Any] = dict(
        id=device_id,
        name=name,
        state=DeviceState.enrolled if enrolled else DeviceState.awaiting_approval,
        site_id=site_id,
        profile_id=profile_id,
        token_id=token_id,
        labels=labels,
        key_pin=key_pin,
        public_key_pem=public_key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        serial=inventory.serial,
        hardware_id=inventory.hardware_id,
        inventory=inventory.model_dump(mode="json"),
        status={},
        status_digest=None,
        applied_revision=None,
        credential_generation=1,
        created_at=now,
        enrolled_at=None,
        state_changed_at=now,
        last_seen_at=None,
        decided_by=decided_by,
        certificate_pem=None,
        certificate_not_after=None,
    )
    if enrolled:
        row.update(certificate_fields(rt, device_id, public_key), enrolled_at=now)
    return row


def certificate_fields(rt: Runtime, device_id: str, public_key: object) -> dict[str, Any]:
    """Sign a device certificate; the columns that record it."""
    chain, not_after = rt.authority.sign_device(
        public_key,  # type: ignore[arg-type]
        device_id,
        rt.settings.device_cert_lifetime,
    )
    return {"certificate_pem": chain, "certificate_not_after": not_after}


def _again_by_pin(rt: Runtime, key_pin: str, cred: _Credential) -> EnrolResponse:
    with Session(rt.engine) as s:
        existing = s.scalars(
            select(Device).where(or_(Device.key_pin == key_pin, Device.pending_key_pin == key_pin))
        ).one()
        if existing.pending_key_pin == key_pin:
            return rekey.waiting(rt, existing.id)
        return _again(rt, s, existing, cred)


def _again(rt: Runtime, s: Session, device: Device, cred: _Credential) -> EnrolResponse:
    """A retry with a key we know: same device, no further token use."""
    token = s.get(RegistrationToken, device.token_id) if device.token_id else None
    if token is None or not cred.opens(token):
        raise Conflict(
            f"this device key is already enrolled as {device.id} with another registration token",
            code="key_in_use",
        )
    if device.state == DeviceState.rejected:
        raise Forbidden(
            f"an operator rejected device {device.id}; it cannot enrol with this key",
            code="rejected",
        )
    if device.state == DeviceState.decommissioned:
        raise Forbidden(
            f"device {device.id} was decommissioned; re-provision it with a new key",
            code="device_decommissioned",
        )
    profile = s.get(Profile, device.profile_id) if device.profile_id else None
    name = profile.name if profile else None
    return answer(rt, device.id, device.state, device.certificate_pem, name)


def answer(
    rt: Runtime, device_id: str, state: str, chain: str | None, profile: str | None
) -> EnrolResponse:
    waiting = state == DeviceState.awaiting_approval
    return EnrolResponse(
        device_id=device_id,
        state=DeviceState(state),
        certificate_chain=None if waiting else chain,
        trust_bundle=rt.authority.trust_bundle,
        profile=profile,
        interval_seconds=rt.settings.device_interval_seconds,
        retry_after_seconds=rt.settings.approval_retry_seconds if waiting else None,
        message="waiting for an operator to approve this device" if waiting else "enrolled",
        controller_id=rt.controller_id,
    )
