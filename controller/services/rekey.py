"""A known device that lost its key: a new key for the same device, once an operator
approves, so the device keeps its id, labels, profile and history.

When an enrolment with a valid token brings a key nobody holds, but a hardware id that
an active device at the token's site already has, the new key waits on that device
(``pending_key_pin``) instead of creating a second device. The agent polls as if
awaiting approval; an operator's ``devices approve`` swaps the key in, issues its
certificate and bumps the credential generation (the old key stops working).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
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


def claim(
    rt: Runtime, token: Row[Any], hardware_id: str, public_key: object, key_pin: str
) -> EnrolResponse | None:
    """Hold ``key_pin`` on the active device with this hardware id at the token's site;
    None when there is no such device (an ordinary first enrolment)."""
    try:
        with session_scope(rt.engine) as s:
            device = s.scalars(
                select(Device)
                .where(
                    Device.hardware_id == hardware_id,
                    Device.site_id == token.site_id,
                    Device.state.in_([str(x) for x in ACTIVE]),  # type: ignore[attr-defined]
                )
                .with_for_update()
            ).first()
            if device is None:
                return None
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
