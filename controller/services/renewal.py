"""Certificate renewal and re-enrolment by proof of the key on record.

The device signs, with the key the controller knows, an assertion naming the
SHA-256 of a new CSR; the controller swaps in the new key and issues its
certificate. The same call serves a device whose certificate expired while it was
offline: what counts is possession of the key, not the age of the certificate.
Re-keying bumps the credential generation, so access tokens issued for the old key
stop working on every worker at once.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from edgefleet.controller.db import session_scope
from edgefleet.controller.lifecycle import ACTIVE
from edgefleet.controller.models import Device, Profile, aware
from edgefleet.controller.pki.authority import parse_device_csr
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit
from edgefleet.controller.services.device_tokens import verify_assertion
from edgefleet.controller.services.enrolment import certificate_fields
from edgefleet.errors import BadRequest, Conflict, Forbidden
from edgefleet.wire import DeviceState, EnrolResponse, RenewRequest


def renew(rt: Runtime, device_id: str, req: RenewRequest) -> EnrolResponse:
    claimed, _auth, claims = verify_assertion(rt, req.proof, extra_claims=("csr_sha256",))
    if claimed != device_id:
        raise Forbidden("a device may only renew its own certificate", code="other_device")
    if claims["csr_sha256"] != hashlib.sha256(req.csr.encode()).hexdigest():
        raise BadRequest(
            "the proof names another CSR (csr_sha256 must be the SHA-256 of the CSR text)",
            code="proof_mismatch",
        )
    csr, key_pin = parse_device_csr(req.csr)
    public_key = csr.public_key()
    cert = certificate_fields(rt, device_id, public_key)
    try:
        with session_scope(rt.engine) as s:
            device = s.get(Device, device_id, with_for_update=True)
            assert device is not None, "verify_assertion found this device"
            if DeviceState(device.state) not in ACTIVE:
                raise Forbidden(f"device {device_id} is {device.state}", code="not_enrolled")
            not_after = aware(device.certificate_not_after)
            expired = not_after is not None and not_after <= datetime.now(UTC)
            rekeyed = device.key_pin != key_pin
            if rekeyed:
                clash = s.scalars(
                    select(Device.id).where(
                        or_(Device.key_pin == key_pin, Device.pending_key_pin == key_pin)
                    )
                ).first()
                if clash is not None:
                    raise Conflict("that key belongs to another device", code="key_in_use")
                device.key_pin = key_pin
                device.public_key_pem = public_key.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ).decode()
                device.credential_generation += 1
            device.certificate_pem = cert["certificate_pem"]
            device.certificate_not_after = cert["certificate_not_after"]
            action = "device.reenrol" if expired else "device.renew"
            audit.record(
                s, Operator(f"device:{device_id}", Role.viewer), action, device_id, rekeyed=rekeyed
            )
            profile = s.get(Profile, device.profile_id) if device.profile_id else None
            answer = EnrolResponse(
                device_id=device_id,
                state=DeviceState(device.state),
                certificate_chain=device.certificate_pem,
                trust_bundle=rt.authority.trust_bundle,
                profile=profile.name if profile else None,
                interval_seconds=rt.settings.device_interval_seconds,
                message="re-enrolled" if expired else "renewed",
                controller_id=rt.controller_id,
            )
    except IntegrityError as exc:
        raise Conflict("that key belongs to another device", code="key_in_use") from exc
    rt.changed()
    return answer
