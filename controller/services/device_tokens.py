"""``POST /auth/token``: a device's signed assertion buys a short-lived access token.

The assertion (RFC 7523 ``private_key_jwt``, ES256) is checked against the key on
record for its device; its ``jti`` is stored until the assertion expires, and a
second use is refused. The ``jti`` is recorded in group commits (``assertion_ledger``):
the exchange awaits its commit on the event loop instead of holding a database thread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

import jwt
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.lifecycle import ACTIVE
from edgefleet.controller.runtime import DeviceAuth, Runtime
from edgefleet.errors import Forbidden, Unauthorized
from edgefleet.wire import MAX_ASSERTION_LIFETIME_S, AccessToken, DeviceState


async def exchange(rt: Runtime, assertion: str) -> AccessToken:
    device_id, auth, claims = await run_in_threadpool(check_assertion, rt, assertion, ())
    _refuse_replay(await asyncio.wrap_future(_spend(rt, device_id, claims)))
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
    """Check a device's signed assertion and spend its ``jti`` (blocking until recorded).

    Used for certificate renewal (which adds the new CSR's digest as a claim). Returns
    the device id, its credentials and the claims.
    """
    device_id, auth, claims = check_assertion(rt, assertion, extra_claims)
    _refuse_replay(_spend(rt, device_id, claims).result())
    return device_id, auth, claims


def check_assertion(
    rt: Runtime, assertion: str, extra_claims: tuple[str, ...]
) -> tuple[str, DeviceAuth, dict[str, Any]]:
    """Check a device's signed assertion against the key on record; the caller spends
    its ``jti``. Returns the device id, its credentials and the claims."""
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
    return device_id, auth, claims


def _spend(rt: Runtime, device_id: str, claims: dict[str, Any]) -> Future[bool]:
    until = int(claims["exp"]) + rt.settings.assertion_leeway_seconds
    return rt.assertions.spend(f"{device_id}:{claims['jti']}", until)


def _refuse_replay(new: bool) -> None:
    if not new:
        raise Unauthorized(
            "this assertion was used before (jti replayed)", code="assertion_replayed"
        )
