"""What every console page shares: the session behind the request, role checks, CSRF
checks on forms, and rendering a template with the operator's context."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from edgefleet.controller import roles
from edgefleet.controller.console import formats
from edgefleet.controller.roles import Role
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import console_sessions
from edgefleet.controller.services.console_sessions import Current
from edgefleet.errors import BadRequest, Forbidden, Unauthorized

COOKIE = "__Host-ef_session"
"""``__Host-``: the browser keeps it only if Secure, for this host alone, on path /."""
PREFIX = "/console"
HERE = Path(__file__).parent

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(
    ago=formats.ago, when=formats.when, duration=formats.duration, bytes=formats.size
)
templates.env.globals.update(prefix=PREFIX)


class LoginRequired(Unauthorized):
    """No session, or an ended one: a page sends the browser to the login form."""

    default_code = "no_session"


def runtime(request: Request) -> Runtime:
    return request.app.state.rt  # type: ignore[no-any-return]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


async def _current(request: Request) -> Current:
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise LoginRequired("log in to use the console")
    try:
        cur = await run_in_threadpool(
            console_sessions.current, runtime(request), secret, client_address(request)
        )
    except Unauthorized as exc:
        raise LoginRequired(exc.message, code=exc.code) from exc
    request.state.console = cur
    return cur


Viewer = Annotated[Current, Depends(_current)]
"""Any logged-in user; pages narrow it with :func:`require`."""


def require(cur: Current, allowed: frozenset[Role]) -> None:
    """The API's refusal, word for word (``api/deps.py``)."""
    if cur.operator.role not in allowed:
        raise Forbidden(
            f"role {cur.operator.role.value} may not do this; it needs one of "
            f"{', '.join(sorted(r.value for r in allowed))}",
            code="role",
        )


async def form_of(request: Request, cur: Current) -> FormData:
    """The posted form, refused unless it carries this session's CSRF token."""
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, cur.csrf):
        raise Forbidden(
            "this form is missing its security token (or it is from an old page); "
            "reload the page and try again",
            code="csrf",
        )
    return form


def invalid(exc: ValidationError) -> BadRequest:
    """A form that does not make a valid request, said as the API says it."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
    )
    return BadRequest(problems, code="invalid_request")


def can(cur: Current | None) -> dict[str, bool]:
    """What the page may offer: a button shows only where the service would allow it."""
    role = cur.operator.role if cur else None
    return {
        "read": role in roles.READ,
        "write": role in roles.WRITE,
        "admin": role in roles.ADMIN,
        "approve": role in roles.APPROVE,
    }


HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
"""Pages load nothing from elsewhere, cannot be framed, and are not kept in caches
(they show who is logged in)."""


def page(
    request: Request, name: str, cur: Current | None, status: int = 200, **context: Any
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        name,
        {
            "me": cur.operator if cur else None,
            "csrf": cur.csrf if cur else "",
            "can": can(cur),
            "flash": request.query_params.get("ok", ""),
            **context,
        },
        status_code=status,
    )
    response.headers.update(HEADERS)
    return response


def back_to(path: str, message: str = "") -> RedirectResponse:
    """After a successful POST: a GET of the page, so a reload does not post again."""
    target = PREFIX + path
    if message:
        target += ("&" if "?" in target else "?") + "ok=" + quote(message)
    return RedirectResponse(target, status_code=303)


def fragment(request: Request) -> bool:
    """The live-update script asks for the part of a page that changes."""
    return request.headers.get("x-live") == "1"
