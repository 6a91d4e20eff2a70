"""Profiles, their revisions with a diff between any two, and the fleet repositories'
history (what Flux or Argo CD at each site applies)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from edgefleet import profilespec
from edgefleet.controller import roles
from edgefleet.controller.console.web import Viewer, page, require, runtime
from edgefleet.controller.services import gitops, profiles
from edgefleet.errors import BadRequest

router = APIRouter()
REVISIONS_SHOWN = 20
COMMITS_SHOWN = 50


def _number(value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit():
        raise BadRequest(f"{value!r} is not a revision number", code="bad_request")
    return int(value)


@router.get("/profiles", response_class=HTMLResponse)
async def profile_list(request: Request, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    found = await run_in_threadpool(profiles.list_profiles, runtime(request).engine)
    return page(request, "profiles.html", cur, profiles=found, nav="profiles")


def _history(engine: Any, name: str, number: int | None) -> dict[str, Any]:
    shown = profiles.get_profile(engine, name, number)
    latest = shown["latest_revision"]
    first = max(1, latest - REVISIONS_SHOWN + 1)
    revisions = [profiles.get_profile(engine, name, n) for n in range(latest, first - 1, -1)]
    return {
        "p": shown,
        "yaml": profilespec.canonical_yaml(profiles.document(name, shown["spec"])),
        "revisions": revisions,
    }


@router.get("/profiles/{name}", response_class=HTMLResponse)
async def profile_page(request: Request, name: str, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    engine = runtime(request).engine
    number = _number(request.query_params.get("revision"))
    found = await run_in_threadpool(_history, engine, name, number)
    return page(request, "profile.html", cur, nav="profiles", **found)


@router.get("/profiles/{name}/diff", response_class=HTMLResponse)
async def profile_diff(request: Request, name: str, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    args = request.query_params
    diff = await run_in_threadpool(
        profiles.diff_profile,
        runtime(request).engine,
        name,
        _number(args.get("a")),
        _number(args.get("b")),
    )
    return page(request, "profile_diff.html", cur, d=diff, nav="profiles")


@router.get("/gitops", response_class=HTMLResponse)
async def repositories(request: Request, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    rt = runtime(request)
    writer = await run_in_threadpool(gitops.status, rt)
    names = sorted(writer["repository_heads"])
    chosen = request.query_params.get("repository") or (names[0] if names else "")
    commits = await run_in_threadpool(gitops.log, rt, chosen, COMMITS_SHOWN) if chosen else []
    return page(
        request,
        "gitops.html",
        cur,
        writer=writer,
        names=names,
        chosen=chosen,
        commits=commits,
        nav="gitops",
    )
