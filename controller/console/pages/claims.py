"""QR claims shown by devices: the page a scanned code opens, where a person checks the
confirmation code and approves the device into a site, and the list of waiting claims.

An installer reaches this page from a phone: it is the one page they need, so it is
built for a small screen first."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from edgefleet.controller import roles
from edgefleet.controller.console.web import (
    Viewer,
    back_to,
    form_of,
    invalid,
    page,
    require,
    runtime,
)
from edgefleet.controller.services import claims, profiles, sites
from edgefleet.controller.services.claims import ClaimApprove
from edgefleet.labels import parse_labels

router = APIRouter()
SEES = roles.READ | roles.APPROVE


@router.get("/claims", response_class=HTMLResponse)
async def claim_list(request: Request, cur: Viewer) -> HTMLResponse:
    require(cur, SEES)
    rt = runtime(request)
    pending = await run_in_threadpool(claims.list_claims, rt, cur.operator, "pending")
    every = await run_in_threadpool(claims.list_claims, rt, cur.operator, None, 50)
    decided = [c for c in every if c["state"] != "pending"]
    return page(request, "claims.html", cur, pending=pending, decided=decided, nav="claims")


@router.get("/claims/{claim_id}", response_class=HTMLResponse)
async def claim_page(request: Request, claim_id: str, cur: Viewer) -> HTMLResponse:
    require(cur, SEES)
    rt = runtime(request)
    claim = await run_in_threadpool(claims.get_claim, rt, cur.operator, claim_id)
    return page(
        request,
        "claim.html",
        cur,
        c=claim,
        sites=await run_in_threadpool(sites.list_sites, rt.engine, cur.operator),
        profiles=await run_in_threadpool(profiles.list_profiles, rt.engine),
        nav="claims",
    )


@router.post("/claims/{claim_id}/approve")
async def approve(request: Request, claim_id: str, cur: Viewer) -> Response:
    require(cur, roles.APPROVE)
    form = await form_of(request, cur)
    labels = [x.strip() for x in str(form.get("labels") or "").split(",") if x.strip()]
    try:
        req = ClaimApprove(
            site=str(form.get("site") or ""),
            profile=str(form.get("profile") or "") or None,
            name=str(form.get("name") or "").strip() or None,
            labels=parse_labels(labels),
        )
    except ValidationError as exc:
        raise invalid(exc) from exc
    done = await run_in_threadpool(claims.approve, runtime(request), cur.operator, claim_id, req)
    return back_to(f"/claims/{claim_id}", f"approved: device {done['device_id']} is enrolling")


@router.post("/claims/{claim_id}/reject")
async def reject(request: Request, claim_id: str, cur: Viewer) -> Response:
    require(cur, roles.APPROVE)
    form = await form_of(request, cur)
    reason = str(form.get("reason") or "").strip()
    await run_in_threadpool(claims.reject, runtime(request), cur.operator, claim_id, reason)
    return back_to(f"/claims/{claim_id}", "rejected")
