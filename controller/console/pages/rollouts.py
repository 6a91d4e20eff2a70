"""Rollouts: plan (a dry run over the live fleet), create exactly what was planned, watch
each wave, and pause, resume, abort or roll back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, QueryParams

from edgefleet.controller import roles
from edgefleet.controller.console import charts, series
from edgefleet.controller.console.web import (
    Viewer,
    back_to,
    form_of,
    fragment,
    invalid,
    page,
    require,
    runtime,
)
from edgefleet.controller.rollouts.spec import RolloutSpec
from edgefleet.controller.services import profiles, rollout_actions, rollout_views, rollouts, sites
from edgefleet.errors import ApiError, BadRequest
from edgefleet.labels import parse_labels

router = APIRouter()
ACTIONS = {
    "pause": rollout_actions.pause,
    "resume": rollout_actions.resume,
    "abort": rollout_actions.abort,
    "rollback": rollout_actions.rollback,
}
FIELDS = [
    "profile",
    "revision",
    "waves",
    "bake_minutes",
    "min_success_percent",
    "max_failures",
    "max_p95_ms",
    "max_error_percent",
    "on_failure",
    "offline",
    "offline_deadline_minutes",
    "concurrency",
    "labels",
    "sites",
    "shadow_minutes",
    "min_agreement_percent",
    "max_mad",
    "min_shadow_samples",
    "seed",
]


def _number(fields: QueryParams | FormData, name: str, scale: float = 1) -> float | None:
    text = str(fields.get(name) or "").strip()
    if not text:
        return None
    try:
        return round(float(text) * scale, 9)  # 95 percent is 0.95, not 0.9500000000000001
    except ValueError as exc:
        raise BadRequest(f"{name.replace('_', ' ')}: {text!r} is not a number") from exc


def spec_of(fields: QueryParams | FormData) -> RolloutSpec:
    """The plan form as the API's rollout document, in the units people type (minutes,
    percent); every problem is one BadRequest naming the field."""

    def text(name: str) -> str:
        return str(fields.get(name) or "").strip()

    def whole(name: str, scale: float = 1) -> int | None:
        value = _number(fields, name, scale)
        return None if value is None else int(value)

    gates: dict[str, Any] = {}
    for key, name, scale in (
        ("min_success_ratio", "min_success_percent", 0.01),
        ("max_p95_ms", "max_p95_ms", 1),
        ("max_error_rate", "max_error_percent", 0.01),
        ("min_agreement", "min_agreement_percent", 0.01),
        ("max_mad", "max_mad", 1),
    ):
        if (value := _number(fields, name, scale)) is not None:
            gates[key] = value
    if (failures := whole("max_failures")) is not None:
        gates["max_failures"] = failures
    if (samples := whole("min_shadow_samples")) is not None:
        gates["min_shadow_samples"] = samples
    body: dict[str, Any] = {
        "profile": text("profile"),
        "revision": whole("revision"),
        "waves": text("waves") or "1,10%,100%",
        "gates": gates,
        "on_failure": text("on_failure") or "rollback",
        "offline": text("offline") or "wait",
        "concurrency": whole("concurrency"),
        "labels": parse_labels([x.strip() for x in text("labels").split(",") if x.strip()]),
        "sites": [x.strip() for x in text("sites").split(",") if x.strip()],
        "seed": text("seed") or None,
    }
    for key, name in (
        ("bake_seconds", "bake_minutes"),
        ("offline_deadline_seconds", "offline_deadline_minutes"),
        ("shadow_seconds", "shadow_minutes"),
    ):
        if (seconds := whole(name, 60)) is not None:
            body[key] = seconds
    try:
        return RolloutSpec.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from exc


async def _list_page(
    request: Request, cur: Viewer, plan: dict[str, Any] | None = None, error: str = ""
) -> HTMLResponse:
    rt = runtime(request)
    return page(
        request,
        "rollouts.html",
        cur,
        status=400 if error else 200,
        rollouts=await run_in_threadpool(rollout_views.list_rollouts, rt, None, 50),
        profiles=await run_in_threadpool(profiles.list_profiles, rt.engine),
        sites=await run_in_threadpool(sites.list_sites, rt.engine),
        form={k: request.query_params.get(k, "") for k in FIELDS},
        plan=plan,
        error=error,
        nav="rollouts",
    )


@router.get("/rollouts", response_class=HTMLResponse)
async def rollout_list(request: Request, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    return await _list_page(request, cur)


@router.get("/rollouts/plan", response_class=HTMLResponse)
async def plan(request: Request, cur: Viewer) -> HTMLResponse:
    """A dry run changes nothing, so it is a GET: a plan can be bookmarked and shared."""
    require(cur, roles.READ)
    try:
        spec = spec_of(request.query_params)
        shown = await run_in_threadpool(
            rollouts.plan, runtime(request), cur.operator, spec, datetime.now(UTC)
        )
    except ApiError as exc:
        return await _list_page(request, cur, error=exc.message)
    return await _list_page(request, cur, plan=shown)


@router.post("/rollouts")
async def create(request: Request, cur: Viewer) -> Response:
    require(cur, roles.WRITE)
    form = await form_of(request, cur)
    spec = spec_of(form)
    made = await run_in_threadpool(
        rollout_actions.create,
        runtime(request),
        cur.operator,
        spec,
        str(form.get("reason") or ""),
        datetime.now(UTC),
    )
    return back_to(f"/rollouts/{made['id']}", f"rollout {made['id']} created")


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
async def rollout_page(request: Request, rollout_id: int, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    r = await run_in_threadpool(rollout_views.get_rollout, runtime(request), rollout_id)
    chart = charts.rollout_chart(series.progress_of(r), title="Devices per wave")
    name = "rollout_progress.html" if fragment(request) else "rollout.html"
    return page(request, name, cur, r=r, chart=chart, nav="rollouts")


@router.post("/rollouts/{rollout_id}/{action}")
async def act(request: Request, rollout_id: int, action: str, cur: Viewer) -> Response:
    require(cur, roles.WRITE)
    form = await form_of(request, cur)
    verb = ACTIONS.get(action)
    if verb is None:
        raise BadRequest(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    reason = str(form.get("reason") or "").strip()
    await run_in_threadpool(verb, runtime(request), cur.operator, rollout_id, reason)
    return back_to(f"/rollouts/{rollout_id}", f"{action}: done")
