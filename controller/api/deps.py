"""Request dependencies as ``Annotated`` aliases: the runtime, the calling device, the
calling operator with the roles an endpoint allows."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from edgefleet.controller import roles
from edgefleet.controller.access import DeviceClaims
from edgefleet.controller.lifecycle import ACTIVE
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.runtime import DeviceAuth, Runtime
from edgefleet.controller.services import users
from edgefleet.errors import Forbidden, Unauthorized
from edgefleet.wire import REVISION_MAX, DeviceState


async def get_runtime(request: Request) -> Runtime:
    """Async on purpose: FastAPI would run a plain function in its thread pool."""
    return request.app.state.rt  # type: ignore[no-any-return]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

RowId = Annotated[int, Path(ge=1, le=REVISION_MAX)]
"""A rollout's or an update's id. Ids, revisions and waves are 32-bit integer columns: a
larger number is refused (422) by its bound, not by the database driver (a 500)."""


def bearer_token(request: Request) -> str:
    return bearer_of(request.headers.get("authorization", ""))


def bearer_of(value: str) -> str:
    """The token of an ``Authorization: Bearer`` header's value."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "this call needs an Authorization: Bearer token", code="missing_credentials"
        )
    return token.strip()


def device_claims(rt: Runtime, token: str, device_id: str) -> DeviceClaims:
    """The access token's claims, if it was issued to ``device_id`` by this controller."""
    rt.epoch.check()
    claims = rt.access.verify(token)
    if claims.device_id != device_id:
        raise Forbidden("a device may only reach its own resources", code="other_device")
    return claims


def check_device(auth: DeviceAuth | None, claims: DeviceClaims, device_id: str) -> None:
    """The device still holds the credentials the token was issued for."""
    if auth is None:
        raise Unauthorized(f"no device {device_id}", code="unknown_device")
    if auth.state == DeviceState.decommissioned:
        raise Forbidden(f"device {device_id} was decommissioned", code="device_decommissioned")
    if auth.generation != claims.generation or auth.state not in ACTIVE:
        raise Unauthorized(
            "this access token was issued for credentials that are no longer valid",
            code="token_revoked",
        )


async def current_device(request: Request, device_id: str) -> str:
    """The device named in the path, proven by its access token; refuses any other."""
    rt: Runtime = request.app.state.rt
    claims = device_claims(rt, bearer_token(request), device_id)
    auth = rt.cached_auth(device_id) or await run_in_threadpool(rt.device_auth, device_id)
    check_device(auth, claims, device_id)
    return device_id


CurrentDevice = Annotated[str, Depends(current_device)]


def _operator_with(allowed: frozenset[Role]):  # type: ignore[no-untyped-def]
    async def dep(request: Request) -> Operator:
        rt: Runtime = request.app.state.rt
        token = bearer_token(request)
        addr = request.client.host if request.client else ""
        who = await run_in_threadpool(users.authenticate, rt.engine, token, addr)
        if who.role not in allowed:
            raise Forbidden(
                f"role {who.role.value} may not do this; it needs one of "
                f"{', '.join(sorted(r.value for r in allowed))}",
                code="role",
            )
        return who

    return Depends(dep)


Reader = Annotated[Operator, _operator_with(roles.READ)]
Writer = Annotated[Operator, _operator_with(roles.WRITE)]
Admin = Annotated[Operator, _operator_with(roles.ADMIN)]
Approver = Annotated[Operator, _operator_with(roles.APPROVE)]
ReaderOrApprover = Annotated[Operator, _operator_with(roles.READ | roles.APPROVE)]
"""Installers too: they see what waits for them (QR claims) without reading the fleet."""
AnyOperator = Annotated[Operator, _operator_with(frozenset(Role))]
"""Every role; the service decides (e.g. anyone may set their own password)."""
