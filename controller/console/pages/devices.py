"""Devices: the searchable list and one device's page, with its actions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.controller import roles
from edgefleet.controller.console.web import (
    Viewer,
    back_to,
    form_of,
    fragment,
    page,
    require,
    runtime,
)
from edgefleet.controller.services import devices, profiles, results, sites, updates
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
    found = await run_in_threadpool(
        devices.list_devices,
        rt,
        cur.operator,
        site=site,
        state=state,
        query=q,
        limit=PAGE + 1,
        offset=offset,
    )
    context: dict[str, Any] = {
        "devices": found[:PAGE],
        "more": len(found) > PAGE,
        "offset": offset,
        "page_size": PAGE,
        "q": q or "",
        "site": site or "",
        "state": state or "",
        "states": list(DeviceState),
        "sites": await run_in_threadpool(sites.list_sites, rt.engine),
        "nav": "devices",
    }
    name = "devices_table.html" if fragment(request) else "devices.html"
    return page(request, name, cur, **context)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device_page(request: Request, device_id: str, cur: Viewer) -> HTMLResponse:
    require(cur, roles.READ)
    rt, who = runtime(request), cur.operator
    device = await run_in_threadpool(devices.get_device, rt, who, device_id)
    history = await run_in_threadpool(updates.list_updates, rt, who, device=device_id, limit=20)
    recent = await run_in_threadpool(
        results.list_results, rt, who, device=device_id, newest=True, limit=10
    )
    profile_names = [p["name"] for p in await run_in_threadpool(profiles.list_profiles, rt.engine)]
    return page(
        request,
        "device.html",
        cur,
        d=device,
        updates=history,
        results=recent["results"],
        profiles=profile_names,
        nav="devices",
    )


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
