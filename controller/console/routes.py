"""Puts the console on the app: its pages, its static files, and errors shown as pages."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from edgefleet.controller.console.pages import (
    admin,
    claims,
    devices,
    drift,
    login,
    overview,
    profiles,
    rollouts,
    tokens,
)
from edgefleet.controller.console.web import HERE, PREFIX, LoginRequired, page
from edgefleet.errors import ApiError

TITLES = {
    400: "That did not work",
    401: "Log in again",
    403: "Not allowed",
    404: "Not found",
    409: "That cannot be done now",
    422: "That did not work",
    429: "Too many attempts",
}


def mount(app: FastAPI) -> None:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    for module in (login, overview, devices, claims, tokens, profiles, rollouts, drift, admin):
        router.include_router(module.router)
    app.include_router(router)
    app.mount(PREFIX + "/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)


def is_console(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


def error_page(request: Request, exc: ApiError) -> Response:
    """An API error met by a person: a page in words, or the login form if the session
    is missing or over (then back to where they were)."""
    if isinstance(exc, LoginRequired) or (exc.status == 401 and request.method == "GET"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)
    cur = getattr(request.state, "console", None)
    referer = request.headers.get("referer", "")
    back = referer if referer.startswith(str(request.base_url).rstrip("/") + PREFIX) else ""
    response = page(
        request,
        "error.html",
        cur,
        status=exc.status,
        title=TITLES.get(exc.status, "Something went wrong"),
        message=exc.message,
        back=back,
    )
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(int(exc.retry_after))
    return response
