"""The device API: trust chain, enrolment, access tokens, desired state, status."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.api.deps import CurrentDevice, RuntimeDep
from edgefleet.controller.ratelimit import rate_limited
from edgefleet.controller.services import device_status, device_tokens, enrolment, renewal
from edgefleet.errors import ApiError, BadRequest
from edgefleet.wire import (
    AccessToken,
    DeviceState,
    EnrolRequest,
    EnrolResponse,
    RenewRequest,
    StatusAck,
    StatusReport,
    TokenRequest,
)

router = APIRouter(tags=["device"])


@router.get("/pki/chain", response_class=Response)
def pki_chain(rt: RuntimeDep) -> Response:
    """Roots and intermediates; devices check them against their pins before trusting."""
    return Response(rt.authority.chain_pem, media_type="application/x-pem-file")


@router.post(
    "/enrol",
    response_model=EnrolResponse,
    responses={202: {"model": EnrolResponse, "description": "awaiting operator approval"}},
    dependencies=[rate_limited("enrol")],
)
def enrol(req: EnrolRequest, rt: RuntimeDep) -> JSONResponse:
    try:
        answer = enrolment.enrol(rt, req)
    except ApiError as exc:
        rt.metrics.enrolments.labels(outcome=exc.code).inc()
        raise
    rt.metrics.enrolments.labels(outcome=answer.state.value).inc()
    status = 202 if answer.state == DeviceState.awaiting_approval else 200
    return JSONResponse(answer.model_dump(mode="json"), status_code=status)


@router.post("/auth/token", response_model=AccessToken, dependencies=[rate_limited("token")])
async def auth_token(req: TokenRequest, rt: RuntimeDep) -> AccessToken:
    return await device_tokens.exchange(rt, req.client_assertion)


@router.post(
    "/devices/{device_id}/renew",
    response_model=EnrolResponse,
    dependencies=[rate_limited("token")],
)
def renew(device_id: str, req: RenewRequest, rt: RuntimeDep) -> EnrolResponse:
    """New key and certificate, proven by the key on record (also after expiry)."""
    return renewal.renew(rt, device_id, req)


@router.get("/devices/{device_id}/desired", response_class=Response)
async def desired(device_id: CurrentDevice, request: Request, rt: RuntimeDep) -> Response:
    """Answered from memory; 304 when the device already holds this ETag."""
    entry = rt.cached_desired(device_id) or await run_in_threadpool(rt.desired, device_id)
    headers = {"ETag": entry.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == entry.etag:
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)


@router.post("/devices/{device_id}/status", response_model=StatusAck)
async def status(device_id: CurrentDevice, request: Request, rt: RuntimeDep) -> StatusAck:
    raw = await request.body()
    digest = hashlib.sha256(raw).hexdigest()
    state = device_status.heartbeat(rt, device_id, digest)
    if state is None:
        try:
            report = StatusReport.model_validate_json(raw)
        except ValidationError as exc:
            raise BadRequest(
                f"the status report is not valid: {_first_error(exc)}", code="invalid_status"
            ) from exc
        state = await run_in_threadpool(device_status.store, rt, device_id, report, digest)
    if rt.cached_desired(device_id) is None:
        await run_in_threadpool(rt.desired, device_id)
    return device_status.ack(rt, device_id, state)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"
