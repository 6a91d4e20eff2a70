"""Devices: the searchable list and one device's page, with its actions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.controller import roles
from edgefleet.controller.console import charts, series
from edgefleet.controller.console.web import (
    Viewer,
    back_to,
    form_of,
    fragment,
    page,
    require,
    runtime,
)
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import (
    devices,
    profiles,
    replacement,
    results,
    sites,
    updates,
)
from edgefleet.errors import BadRequest
from edgefleet.wire import DeviceState

router = APIRouter()
PAGE = 50


def _int(value: str | None, default: int) -> int:
    try:
        return max(int(value or default), 0)
    except ValueError as exc:
        raise BadRequest(f"{value!r} is not a number", code="bad_request") from exc


@router.get("/devices", response_class=HTMLResponse)
async def device_list(request: Request, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    rt, args = runtime(request), request.query_params
    q, site, state = args.get("q") or None, args.get("site") or None, args.get("state") or None
    offset = _int(args.get("offset"), 0)
    found, total = await run_in_threadpool(
        devices.page_of_devices,
        rt,
        cur.operator,
        limit=PAGE,
        offset=offset,
        site=site,
        state=state,
        query=q,
    )
    live = fragment(request)
    context: dict[str, Any] = {
        "devices": found,
        "total": total,
        "more": offset + len(found) < total,
        "offset": offset,
        "page_size": PAGE,
        "q": q or "",
        "site": site or "",
        "state": state or "",
        "states": list(DeviceState),
        "sites": [] if live else await run_in_threadpool(sites.list_sites, rt.engine),
        "nav": "devices",
    }
    return page(request, "devices_table.html" if live else "devices.html", cur, **context)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device_page(request: Request, device_id: str, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    rt, who = runtime(request), cur.operator
    device = await run_in_threadpool(devices.get_device, rt, who, device_id)
    history = await run_in_threadpool(replacement.history, rt, who, device_id, 20)
    candidates = await run_in_threadpool(_successors, rt, who, device)
    recent = await run_in_threadpool(
        results.list_results, rt, who, device=device_id, newest=True, limit=10
    )
    profile_names = [p["name"] for p in await run_in_threadpool(profiles.list_profiles, rt.engine)]
    pictures = await run_in_threadpool(_charts, rt, device_id)
    return page(
        request,
        "device.html",
        cur,
        d=device,
        updates=history["updates"],
        lineage=history["lineage"],
        successors=candidates,
        results=recent["results"],
        charts=pictures,
        profiles=profile_names,
        nav="devices",
    )


@router.get("/updates/{update_id}", response_class=HTMLResponse)
async def update_page(request: Request, update_id: int, cur: Viewer) -> HTMLResponse:
    """One update attempt with the evidence the device kept: why a slot rolled back."""
    require(cur, roles.READ)
    found = await run_in_threadpool(updates.get_update, runtime(request), cur.operator, update_id)
    evidence = found.get("evidence") or {}
    latency = [
        (
            sample["model"],
            sample.get("budget_ms"),
            charts.sparkline(sample["model"], sample.get("samples_ms") or [], unit="ms"),
        )
        for sample in evidence.get("latency") or []
    ]
    return page(request, "update.html", cur, u=found, e=evidence, latency=latency, nav="devices")


def _successors(rt: Runtime, who: Any, device: dict[str, Any]) -> list[dict[str, Any]]:
    """Devices at the same site that could take this one's place: enrolled since, and
    not replacing anyone yet (the newest first)."""
    if device["state"] == "decommissioned" or device.get("replaced_by"):
        return []
    near = devices.list_devices(rt, who, site=device["site"], limit=1000)
    enrolled = device.get("enrolled_at") or ""
    fresh = [
        d
        for d in near
        if d["id"] != device["id"]
        and not d.get("replaces")
        and d["state"] != "decommissioned"
        and (d.get("enrolled_at") or "") >= enrolled
    ]
    return sorted(fresh, key=lambda d: d.get("enrolled_at") or "", reverse=True)[:20]


def _charts(rt: Runtime, device_id: str) -> list[Any]:
    """The device's last day: what it reported, and the results that reached us."""
    day = series.last_day(datetime.now(UTC))
    status = series.device_status_per_bucket(rt.engine, day, device_id)
    return [
        charts.device_chart(status, "p95_ms", title="Inference p95 (last 24 h)"),
        charts.device_chart(status, "buffer_depth", title="Results waiting (last 24 h)"),
        charts.results_chart(
            series.results_per_bucket(rt.engine, day, device_id=device_id),
            title="Results stored (last 24 h)",
        ),
    ]


def _action(verb: str, allowed: frozenset[roles.Role], call: Any) -> Any:
    async def act(request: Request, device_id: str, cur: Viewer) -> Response:
        require(cur, allowed)
        form = await form_of(request, cur)
        await run_in_threadpool(call, runtime(request), cur.operator, device_id, form)
        return back_to(f"/devices/{device_id}", f"{verb}: done")

    return act


router.post("/devices/{device_id}/approve")(
    _action("approved", roles.APPROVE, lambda rt, who, d, _f: devices.approve(rt, who, d))
)
router.post("/devices/{device_id}/reject")(
    _action("rejected", roles.APPROVE, lambda rt, who, d, _f: devices.reject(rt, who, d))
)
router.post("/devices/{device_id}/decommission")(
    _action("decommissioned", roles.WRITE, lambda rt, who, d, _f: devices.decommission(rt, who, d))
)
router.post("/devices/{device_id}/retry-update")(
    _action("update retried", roles.WRITE, lambda rt, who, d, _f: devices.retry_update(rt, who, d))
)


def _assign(rt: Any, who: Any, device_id: str, form: Any) -> Any:
    revision = str(form.get("revision") or "").strip()
    return devices.assign(
        rt, who, device_id, str(form.get("profile", "")), _int(revision, 0) or None
    )


router.post("/devices/{device_id}/assign")(_action("assigned", roles.WRITE, _assign))
router.post("/devices/{device_id}/rename")(
    _action(
        "renamed",
        roles.WRITE,
        lambda rt, who, d, f: devices.rename(rt, who, d, str(f.get("name") or "")),
    )
)


@router.post("/devices/{device_id}/replace")
async def replace(request: Request, device_id: str, cur: Viewer) -> Response:
    """One click: the chosen device takes this one's name, labels, profile and place."""
    require(cur, roles.WRITE)
    form = await form_of(request, cur)
    new = str(form.get("new") or "").strip()
    if not new:
        raise BadRequest("choose the device that replaces this one", code="bad_request")
    reason = str(form.get("reason") or "").strip()
    await run_in_threadpool(
        replacement.replace, runtime(request), cur.operator, device_id, new, reason
    )
    return back_to(f"/devices/{new}", f"{new} replaces {device_id}")
