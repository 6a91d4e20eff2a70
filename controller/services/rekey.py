"""A known device that lost its key: a new key for the same device, once an operator
approves, so the device keeps its id, labels, profile and history.

When an enrolment with a valid token brings a key nobody holds, but a hardware id that
an active device at the token's site already has, the new key waits on that device
(``pending_key_pin``) instead of creating a second device. The agent polls as if
awaiting approval; an operator's ``devices approve`` swaps the key in, issues its
certificate and bumps the credential generation (the old key stops working).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from edgefleet.controller.db import session_scope
from edgefleet.controller.lifecycle import ACTIVE
from edgefleet.controller.models import Device
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit
from edgefleet.errors import Conflict
from edgefleet.wire import DeviceState, EnrolResponse


def holder(related: Sequence[Row[Any]], site_id: int) -> str | None:
    """Of the devices sharing the enrolling device's hardware id, the active one at the
    token's site, if any (``related`` comes from the enrolment's own lookup)."""
    return next((r.id for r in related if r.site_id == site_id and r.state in ACTIVE), None)


def claim(
    rt: Runtime, device_id: str, token: Row[Any], public_key: object, key_pin: str
) -> EnrolResponse:
    """Hold ``key_pin`` on the known device until an operator approves it."""
    try:
        with session_scope(rt.engine) as s:
            device = s.get(Device, device_id, with_for_update=True)
            assert device is not None, "holder() found it"
            device.pending_key_pin = key_pin
            device.pending_key_pem = public_key.public_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
            audit.record(
                s,
                Operator(f"device:{device.id}", Role.viewer),
                "device.rekey.request",
                device.id,
                token=token.kid,
            )
            return waiting(rt, device.id)
    except IntegrityError as exc:
        raise Conflict("that key is already waiting on another device", code="key_in_use") from exc


def waiting(rt: Runtime, device_id: str) -> EnrolResponse:
    return EnrolResponse(
        device_id=device_id,
        state=DeviceState.awaiting_approval,
        trust_bundle=rt.authority.trust_bundle,
        interval_seconds=rt.settings.device_interval_seconds,
        retry_after_seconds=rt.settings.approval_retry_seconds,
        message="this device is known with another key; an operator must approve the new one",
        controller_id=rt.controller_id,
    )
