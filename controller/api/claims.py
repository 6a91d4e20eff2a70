"""QR claims shown by devices (DESIGN.md "Device lifecycle", way in 2).

The device's side is anonymous: ``POST /claims`` is rate limited per client address
like ``/enrol``, and the poll is opened by the claim's own secret
(``Authorization: Claim <secret>``), held open until a person decides or
``claim_poll_seconds`` pass. The operators' side lists, shows, approves and rejects.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.api.deps import Approver, ReaderOrApprover, RuntimeDep
from edgefleet.controller.claimwake import ClaimWaits
from edgefleet.controller.ratelimit import client_key, rate_limited
from edgefleet.controller.services import claims
from edgefleet.controller.services.claims import ClaimApprove, ClaimReject
from edgefleet.errors import Unauthorized
from edgefleet.wire import CLAIM_SCHEME, ClaimCreated, ClaimRequest, ClaimStatus

router = APIRouter(prefix="/claims", tags=["claims"])


def claim_secret(request: Request) -> str:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != CLAIM_SCHEME.lower() or not secret.strip():
        raise Unauthorized(
            f"polling a claim needs Authorization: {CLAIM_SCHEME} <the secret from POST /claims>",
            code="missing_credentials",
        )
    return secret.strip()


@router.post("", status_code=201, response_model=ClaimCreated, dependencies=[rate_limited("claim")])
def create_claim(req: ClaimRequest, request: Request, rt: RuntimeDep) -> JSONResponse:
    """A device with no token asks to be let in; it shows the answer's code and URL."""
    limits = request.app.state.rate_limits
    peer = request.client.host if request.client else None
    addr = client_key(peer, request.headers.getlist("x-forwarded-for"), limits.trusted)
    created = claims.create(rt, req, addr)
    return JSONResponse(created.model_dump(mode="json"), status_code=201)


@router.get("/{claim_id}/poll", response_model=ClaimStatus)
async def poll_claim(
    claim_id: str,
    request: Request,
    rt: RuntimeDep,
    wait: Annotated[float | None, Query(ge=0, le=60)] = None,
) -> ClaimStatus:
    """The claim's state; while pending, held open up to ``claim_poll_seconds`` (or
    ``wait``, if shorter) and answered the moment a person decides."""
    secret = claim_secret(request)
    hold = float(rt.settings.claim_poll_seconds)
    if wait is not None:
        hold = min(hold, wait)
    waits: ClaimWaits = request.app.state.claim_waits
    return await waits.poll(claim_id, hold, lambda: claims.poll(rt, claim_id, secret))


@router.get("")
async def list_claims(
    who: ReaderOrApprover,
    rt: RuntimeDep,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=claims.LIST_LIMIT)] = claims.LIST_LIMIT,
) -> list[dict[str, Any]]:
    return await run_in_threadpool(claims.list_claims, rt, who, state, limit)


@router.get("/{claim_id}")
def show_claim(claim_id: str, who: ReaderOrApprover, rt: RuntimeDep) -> dict[str, Any]:
    return claims.get_claim(rt, who, claim_id)


@router.post("/{claim_id}/approve")
def approve_claim(
    claim_id: str, req: ClaimApprove, who: Approver, rt: RuntimeDep
) -> dict[str, Any]:
    """Enrol the device into ``site`` (an installer: their own) with the profile, labels
    and name given; its agent, waiting on its poll, is enrolled at once."""
    return claims.approve(rt, who, claim_id, req)


@router.post("/{claim_id}/reject")
def reject_claim(
    claim_id: str,
    who: Approver,
    rt: RuntimeDep,
    req: Annotated[ClaimReject | None, Body()] = None,
) -> dict[str, Any]:
    """The device's agent is told (with the reason, if any) and stops."""
    return claims.reject(rt, who, claim_id, req.reason if req else "")
