"""Enrolment: a registration token, a CSR and an inventory become a device.

Idempotent per key: the device's key pin is unique, so a retried enrolment with
the same key (a lost response, a controller killed mid-request) finds the same
device and spends no further token use. The token's use is counted with one
conditional UPDATE in the same transaction as the device insert, so two agents
racing for the last use cannot both win.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from edgefleet.controller import bearer
from edgefleet.controller.db import session_scope
from edgefleet.controller.models import Device, Profile, RegistrationToken, aware
from edgefleet.controller.pki.authority import parse_device_csr
from edgefleet.controller.runtime import Runtime
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from edgefleet.errors import Conflict, Forbidden, Gone, Unauthorized
from edgefleet.wire import DeviceState, EnrolRequest, EnrolResponse, Inventory


def new_device_id() -> str:
    return "dev-" + secrets.token_hex(8)


def enrol(rt: Runtime, req: EnrolRequest) -> EnrolResponse:
    secret = bearer.parse_secret(req.token, bearer.REGISTRATION)
    if secret is None:
        raise Unauthorized(
            "the registration token is malformed; copy it again from `edgefleet tokens create`",
            code="token_invalid",
        )
    csr, key_pin = parse_device_csr(req.csr)
    try:
        with session_scope(rt.engine) as s:
            existing = s.scalars(select(Device).where(Device.key_pin == key_pin)).first()
            if existing is not None:
                return _again(rt, s, existing, secret)
            token = _usable_token(s, secret, req.inventory)
            device = _create(rt, s, token, csr.public_key(), key_pin, req.inventory)
            s.flush()
            return _answer(rt, s, device)
    except IntegrityError:
        # The same key raced itself (two retries in flight): the winner's row is there now.
        with session_scope(rt.engine) as s:
            existing = s.scalars(select(Device).where(Device.key_pin == key_pin)).first()
            if existing is None:
                raise
            return _again(rt, s, existing, secret)


def _usable_token(
    s: Session, secret: bearer.BearerSecret, inventory: Inventory
) -> RegistrationToken:
    token = s.scalars(select(RegistrationToken).where(RegistrationToken.kid == secret.kid)).first()
    if token is None or not bearer.matches(secret, token.secret_hash):
        raise Unauthorized(
            "the registration token is not known to this controller (tampered, or for another "
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
    claimed = s.execute(
        update(RegistrationToken)
        .where(
            RegistrationToken.id == token.id,
            RegistrationToken.revoked_at.is_(None),  # type: ignore[union-attr]
            or_(
                RegistrationToken.max_uses.is_(None),  # type: ignore[union-attr]
                RegistrationToken.uses < RegistrationToken.max_uses,
            ),
        )
        .values(uses=RegistrationToken.uses + 1)
    ).rowcount
    if claimed != 1:
        raise Gone(
            f"registration token {token.kid} was used up by another device just now",
            code="token_exhausted",
        )
    return token


def _create(
    rt: Runtime,
    s: Session,
    token: RegistrationToken,
    public_key: object,
    key_pin: str,
    inventory: Inventory,
) -> Device:
    now = datetime.now(UTC)
    device = Device(
        id=new_device_id(),
        state=DeviceState.awaiting_approval if token.require_approval else DeviceState.enrolled,
        site_id=token.site_id,
        profile_id=token.profile_id,
        token_id=token.id,
        labels=dict(token.labels),
        key_pin=key_pin,
        public_key_pem=public_key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        serial=inventory.serial,
        hardware_id=inventory.hardware_id,
        inventory=inventory.model_dump(mode="json"),
        state_changed_at=now,
    )
    if not token.require_approval:
        issue_certificate(rt, device, public_key)
    s.add(device)
    return device


def issue_certificate(rt: Runtime, device: Device, public_key: object) -> None:
    chain, not_after = rt.authority.sign_device(
        public_key,  # type: ignore[arg-type]
        device.id,
        rt.settings.device_cert_days,
    )
    device.certificate_pem = chain
    device.certificate_not_after = not_after
    device.enrolled_at = datetime.now(UTC)


def _again(rt: Runtime, s: Session, device: Device, secret: bearer.BearerSecret) -> EnrolResponse:
    """A retry with a key we know: same device, no further token use."""
    token = s.get(RegistrationToken, device.token_id) if device.token_id else None
    if token is None or token.kid != secret.kid or not bearer.matches(secret, token.secret_hash):
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
    return _answer(rt, s, device)


def _answer(rt: Runtime, s: Session, device: Device) -> EnrolResponse:
    profile = s.get(Profile, device.profile_id) if device.profile_id else None
    waiting = device.state == DeviceState.awaiting_approval
    return EnrolResponse(
        device_id=device.id,
        state=DeviceState(device.state),
        certificate_chain=None if waiting else device.certificate_pem,
        trust_bundle=rt.authority.trust_bundle,
        profile=profile.name if profile else None,
        interval_seconds=rt.settings.device_interval_seconds,
        retry_after_seconds=rt.settings.approval_retry_seconds if waiting else None,
        message="waiting for an operator to approve this device" if waiting else "enrolled",
    )
