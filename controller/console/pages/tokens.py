"""Registration tokens: the list, a form to make one (shown once, with its printable QR
label), and revocation."""

from __future__ import annotations

from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

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
from edgefleet.controller.services import profiles, sites, tokens
from edgefleet.controller.services.tokens import TokenCreate
from edgefleet.errors import ApiError, BadRequest
from edgefleet.labels import parse_labels

router = APIRouter()
EXPIRIES = {"1 day": 86400, "7 days": 7 * 86400, "30 days": 30 * 86400, "90 days": 90 * 86400}
NEVER = "never"


def request_of(form: FormData) -> TokenCreate:
    """The form as the API's request body; every problem is one BadRequest in words."""

    def text(name: str) -> str:
        return str(form.get(name) or "").strip()

    expiry = text("expires") or "7 days"
    if expiry != NEVER and expiry not in EXPIRIES:
        raise BadRequest(f"unknown expiry {expiry!r}", code="bad_request")
    labels = [item.strip() for item in text("labels").replace("\n", ",").split(",") if item.strip()]
    approval = {"yes": True, "no": False}.get(text("approval"))
    uses = text("max_uses")
    body: dict[str, Any] = {
        "site": text("site"),
        "profile": text("profile") or None,
        "labels": parse_labels(labels),
        "description": text("description"),
        "expires_in_seconds": None if expiry == NEVER else EXPIRIES[expiry],
        "max_uses": int(uses) if uses.isdigit() else None,
        "require_approval": approval,
        "qr": form.get("qr") == "on",
    }
    if text("replaces"):
        # A replacement token enrols at the replaced device's site, whatever the form's
        # site list showed: the service takes it from the device.
        body["replaces"], body["site"] = text("replaces"), None
    if uses and not uses.isdigit():
        raise BadRequest("uses must be a whole number, or empty for no limit", code="bad_request")
    try:
        return TokenCreate.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from exc


async def _list(request: Request, cur: Viewer, error: str = "", status: int = 200) -> HTMLResponse:
    rt = runtime(request)
    return page(
        request,
        "tokens.html",
        cur,
        status=status,
        tokens=await run_in_threadpool(tokens.list_tokens, rt),
        sites=await run_in_threadpool(sites.list_sites, rt.engine),
        profiles=await run_in_threadpool(profiles.list_profiles, rt.engine),
        expiries=[*EXPIRIES, NEVER],
        error=error,
        nav="tokens",
    )


@router.get("/tokens", response_class=HTMLResponse)
async def token_list(request: Request, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    return await _list(request, cur)


@router.post("/tokens", response_class=HTMLResponse)
async def create(request: Request, cur: Viewer) -> HTMLResponse:
    """Answers the new token's page directly, not a redirect: the secret is shown this
    once, and a reload must not show it again (``Cache-Control: no-store``)."""
    require(cur, roles.WRITE)
    form = await form_of(request, cur)
    try:
        made = await run_in_threadpool(
            tokens.create_token, runtime(request), cur.operator, request_of(form)
        )
    except ApiError as exc:
        return await _list(request, cur, exc.message, exc.status)
    registration = yaml.safe_dump(made["registration"], sort_keys=False)
    return page(request, "token_created.html", cur, t=made, registration=registration, nav="tokens")


@router.post("/tokens/{kid}/revoke")
async def revoke(request: Request, kid: str, cur: Viewer) -> Response:
    require(cur, roles.WRITE)
    await form_of(request, cur)
    await run_in_threadpool(tokens.revoke_token, runtime(request), cur.operator, kid)
    return back_to("/tokens", f"token {kid} revoked")
