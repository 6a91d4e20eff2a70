"""Registry tokens: the controller is the OCI registry's token issuer.

``GET /registry/token`` is the registry's ``realm``: operators come with HTTP Basic
(username, API token as password), as docker, oras and other registry clients send
it, or with their API token as a bearer. ``GET /devices/{id}/registry-token`` gives a
device a pull token for the repositories of its desired models.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from edgefleet.controller import roles
from edgefleet.controller.api.deps import CurrentDevice, RuntimeDep
from edgefleet.controller.registry_tokens import TOKEN_PATH, parse_scopes
from edgefleet.controller.roles import Operator
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import registry_grants, users
from edgefleet.errors import Forbidden, Unauthorized
from edgefleet.wire import DesiredState, RegistryToken

router = APIRouter(tags=["registry"])

Scopes = Annotated[list[str] | None, Query()]
"""``repository:NAME:ACTIONS``, repeated for several repositories."""
CHALLENGE = {"WWW-Authenticate": 'Basic realm="edgefleet", charset="UTF-8"'}


@router.get(TOKEN_PATH, response_model=RegistryToken)
async def operator_token(
    request: Request, rt: RuntimeDep, scope: Scopes = None, service: str | None = None
) -> RegistryToken | JSONResponse:
    """Pull for viewers, push for operators, delete for admins; installers get nothing."""
    addr = request.client.host if request.client else ""
    try:
        who = await run_in_threadpool(_authenticate, rt, request, addr)
    except Unauthorized as exc:  # the challenge makes registry clients send credentials
        return JSONResponse(exc.body(), status_code=exc.status, headers=CHALLENGE)
    if who.role not in roles.READ:
        raise Forbidden(f"role {who.role.value} may not use the registry", code="role")
    rt.registry_tokens.check_service(service)
    granted = await run_in_threadpool(
        registry_grants.for_operator, rt.engine, who, parse_scopes(scope or [])
    )
    writes = any(a.actions - {registry_grants.PULL} for a in granted)
    rt.metrics.registry_tokens.labels(caller="operator", write=str(writes).lower()).inc()
    return rt.registry_tokens.issue(who.username, granted)


@router.get("/devices/{device_id}/registry-token", response_model=RegistryToken)
async def device_token(
    device_id: CurrentDevice, rt: RuntimeDep, scope: Scopes = None, service: str | None = None
) -> RegistryToken:
    """Pull on the repositories of the device's desired models (those of ``scope`` when
    given); a device without models gets a token that grants nothing."""
    rt.registry_tokens.check_service(service)
    wanted = None if scope is None else parse_scopes(scope)
    entry = rt.cached_desired(device_id) or await run_in_threadpool(rt.desired, device_id)
    granted = registry_grants.for_device(DesiredState.model_validate_json(entry.body), wanted)
    rt.metrics.registry_tokens.labels(caller="device", write="false").inc()
    return rt.registry_tokens.issue(f"device:{device_id}", granted)


def _authenticate(rt: Runtime, request: Request, addr: str) -> Operator:
    """The operator behind Basic (username and API token) or Bearer (API token)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return users.authenticate(rt.engine, value.strip(), addr)
    if scheme.lower() != "basic":
        raise Unauthorized(
            "registry tokens need HTTP Basic credentials: your username, and your API "
            "token as the password",
            code="missing_credentials",
        )
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("malformed Basic credentials", code="invalid_credentials") from exc
    username, _, password = decoded.partition(":")
    who = users.authenticate(rt.engine, password, addr)
    if who.username != username:
        raise Unauthorized(
            f"this API token does not belong to user {username!r}", code="invalid_credentials"
        )
    return who
