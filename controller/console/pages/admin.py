"""Users and the audit log, for admins; and a password change for everyone."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.controller import roles
from edgefleet.controller.console.web import Viewer, back_to, form_of, page, require, runtime
from edgefleet.controller.services import audit, passwords, sites, users

router = APIRouter()
AUDIT_SHOWN = 200


async def _users_page(
    request: Request, cur: Viewer, created: dict[str, Any] | None = None
) -> HTMLResponse:
    engine = runtime(request).engine
    return page(
        request,
        "users.html",
        cur,
        users=await run_in_threadpool(users.list_users, engine),
        sites=await run_in_threadpool(sites.list_sites, engine),
        roles=list(roles.Role),
        created=created,
        nav="users",
    )


@router.get("/users", response_class=HTMLResponse)
async def user_list(request: Request, cur: Viewer) -> HTMLResponse:
    require(cur, roles.ADMIN)
    return await _users_page(request, cur)


@router.post("/users", response_class=HTMLResponse)
async def create(request: Request, cur: Viewer) -> HTMLResponse:
    """Answers the page with the new user's API token, shown this once."""
    require(cur, roles.ADMIN)
    form = await form_of(request, cur)
    rt = runtime(request)
    role = str(form.get("role") or "")
    site = str(form.get("site") or "") if role == roles.Role.installer else None
    username = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    if password:
        passwords.check_strength(password)  # before the user exists: nothing half made
    created = await run_in_threadpool(
        users.create_user, rt.engine, cur.operator, username, role, site or None
    )
    if password:
        await run_in_threadpool(users.set_password, rt.engine, cur.operator, username, password)
    return await _users_page(request, cur, created)


@router.post("/users/{username}/disable")
async def disable(request: Request, username: str, cur: Viewer) -> Response:
    require(cur, roles.ADMIN)
    await form_of(request, cur)
    await run_in_threadpool(users.disable_user, runtime(request).engine, cur.operator, username)
    return back_to("/users", f"{username} disabled: their sessions and API tokens stopped working")


@router.post("/users/{username}/password")
async def set_password(request: Request, username: str, cur: Viewer) -> Response:
    """An admin sets anyone's; everyone else their own, with their current one."""
    form = await form_of(request, cur)
    await run_in_threadpool(
        users.set_password,
        runtime(request).engine,
        cur.operator,
        username,
        str(form.get("password") or ""),
        str(form.get("current") or "") or None,
    )
    if username == cur.operator.username:
        return back_to("/login", "password changed; log in with the new one")
    return back_to("/users", f"password of {username} set; their sessions ended")


@router.get("/account", response_class=HTMLResponse)
async def account(request: Request, cur: Viewer) -> HTMLResponse:
    return page(request, "account.html", cur, nav="account")


@router.get("/audit", response_class=HTMLResponse)
async def audit_log(request: Request, cur: Viewer) -> HTMLResponse:
    require(cur, roles.ADMIN)
    records = await run_in_threadpool(audit.recent, runtime(request).engine, AUDIT_SHOWN)
    return page(request, "audit.html", cur, records=records, nav="audit")
