"""Logging in and out. The login form is the one form without a session, so it carries
a token of its own, kept in a short-lived cookie (double submit): another site cannot
log a browser in to an account of its choosing."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.console.web import (
    COOKIE,
    PREFIX,
    Viewer,
    client_address,
    form_of,
    page,
    runtime,
)
from edgefleet.controller.services import console_sessions
from edgefleet.errors import ApiError, Forbidden

router = APIRouter()
LOGIN_COOKIE = "__Host-ef_login"


def _safe_next(target: str | None) -> str:
    """Only a console path: never send a freshly logged-in browser to another site."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/"


def _login_form(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = page(
        request,
        "login.html",
        None,
        status=status,
        login_csrf=token,
        error=error,
        next=_safe_next(request.query_params.get("next")),
    )
    response.set_cookie(
        LOGIN_COOKIE, token, max_age=3600, secure=True, httponly=True, samesite="strict"
    )
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    return _login_form(request)


@router.post("/login")
async def login(request: Request) -> Response:
    request.app.state.rate_limits.check("login", request)
    form = await request.form()
    sent, kept = str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not kept or not hmac.compare_digest(sent, kept):
        raise Forbidden(
            "the login form is missing its security token (or it is from an old page); "
            "reload the page and log in again",
            code="csrf",
        )
    try:
        done = await run_in_threadpool(
            console_sessions.login,
            runtime(request),
            str(form.get("username", "")),
            str(form.get("password", "")),
            client_address(request),
        )
    except ApiError as exc:
        return _login_form(request, exc.message, status=exc.status)
    response = RedirectResponse(_safe_next(str(form.get("next", ""))), status_code=303)
    response.set_cookie(
        COOKIE,
        done.secret,
        max_age=runtime(request).settings.console_session_seconds,
        secure=True,
        httponly=True,
        samesite="lax",
    )
    response.delete_cookie(LOGIN_COOKIE, secure=True, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request, cur: Viewer) -> Response:
    await form_of(request, cur)
    await run_in_threadpool(console_sessions.logout, runtime(request), cur.session_id, cur.operator)
    response = RedirectResponse(PREFIX + "/login", status_code=303)
    response.delete_cookie(COOKIE, secure=True, httponly=True, samesite="lax")
    return response
