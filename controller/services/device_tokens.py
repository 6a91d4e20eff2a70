"""``POST /auth/token``: a device's signed assertion buys a short-lived access token.

The assertion (RFC 7523 ``private_key_jwt``, ES256) is checked against the key on
record for its device; its ``jti`` is stored until the assertion expires, and a
second use is refused.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from edgefleet.controller.db import session_scope
from edgefleet.controller.lifecycle import ACTIVE
from edgefleet.controller.models import UsedAssertion
from edgefleet.controller.runtime import DeviceAuth, Runtime
from edgefleet.errors import Forbidden, Unauthorized
from edgefleet.wire import MAX_ASSERTION_LIFETIME_S, AccessToken, DeviceState

_PURGE_EVERY = 1000
_spent = itertools.count(1)
"""Every thousandth spent assertion also deletes the expired ones (no extra timer)."""


def exchange(rt: Runtime, assertion: str) -> AccessToken:
    device_id, auth, _claims = verify_assertion(rt, assertion)
    if auth.certificate_expires_at is not None and auth.certificate_expires_at <= time.time():
        raise Unauthorized(
            f"device {device_id}'s certificate has expired; re-enrol by proving the key "
            f"at POST /api/v1/devices/{device_id}/renew",
            code="certificate_expired",
        )
    return AccessToken(
        access_token=rt.access.issue(device_id, auth.generation),
        expires_in=rt.access.ttl_seconds,
    )


def verify_assertion(
    rt: Runtime, assertion: str, extra_claims: tuple[str, ...] = ()
) -> tuple[str, DeviceAuth, dict[str, Any]]:
    """Check a device's signed assertion against the key on record and spend its ``jti``.

    Used for access tokens and for certificate renewal (which adds the new CSR's digest
    as a claim). Returns the device id, its credentials and the claims.
    """
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"the assertion is not a JWT: {exc}", code="invalid_assertion") from exc
    if header.get("alg") != "ES256":
        raise Unauthorized("device assertions must be signed with ES256", code="invalid_assertion")
    device_id = unverified.get("sub")
    if not isinstance(device_id, str) or unverified.get("iss") != device_id:
        raise Unauthorized(
            "the assertion must name the device as both iss and sub", code="invalid_assertion"
        )
    rt.epoch.check()
    auth = rt.device_auth(device_id)
    if auth is None:
        raise Unauthorized(f"no device {device_id} is enrolled here", code="unknown_device")
    if auth.state == DeviceState.decommissioned:
        raise Forbidden(f"device {device_id} was decommissioned", code="device_decommissioned")
    if auth.state not in ACTIVE:
        raise Forbidden(
            f"device {device_id} is {auth.state.value}, not enrolled", code="not_enrolled"
        )
    leeway = rt.settings.assertion_leeway_seconds
    try:
        claims = jwt.decode(
            assertion,
            auth.public_key,
            algorithms=["ES256"],
            audience=rt.controller_id,
            leeway=leeway,
            options={"require": ["iss", "sub", "aud", "iat", "exp", "jti", *extra_claims]},
        )
    except jwt.InvalidAudienceError as exc:
        raise Unauthorized(
            f"the assertion is for another controller (audience must be {rt.controller_id})",
            code="wrong_audience",
        ) from exc
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized(
            "the assertion has expired (is the device clock corrected from the Date header?)",
            code="assertion_expired",
        ) from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized(
            f"the assertion is not signed by device {device_id}'s key", code="bad_signature"
        ) from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"the assertion is not valid: {exc}", code="invalid_assertion") from exc
    exp, iat = int(claims["exp"]), int(claims["iat"])
    now = time.time()
    if exp - iat > MAX_ASSERTION_LIFETIME_S or exp > now + MAX_ASSERTION_LIFETIME_S + leeway:
        raise Unauthorized(
            f"assertions may live at most {MAX_ASSERTION_LIFETIME_S} s", code="invalid_assertion"
        )
    if iat > now + leeway:
        raise Unauthorized("the assertion is issued in the future", code="invalid_assertion")
    _spend_jti(rt, f"{device_id}:{claims['jti']}", exp + leeway)
    return device_id, auth, claims


def _spend_jti(rt: Runtime, jti: str, until: float) -> None:
    try:
        with session_scope(rt.engine) as s:
            s.add(UsedAssertion(jti=jti[:200], expires_at=datetime.fromtimestamp(until, UTC)))
            if next(_spent) % _PURGE_EVERY == 0:
                cutoff = datetime.now(UTC) - timedelta(seconds=60)
                s.execute(delete(UsedAssertion).where(UsedAssertion.expires_at < cutoff))
    except IntegrityError as exc:
        raise Unauthorized(
            "this assertion was used before (jti replayed)", code="assertion_replayed"
        ) from exc
