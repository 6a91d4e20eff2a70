"""The fleet at a glance: devices by state and site, online, offline and degraded,
devices whose results lag, recent failed updates, and the last day in charts. The
numbers refresh themselves (``data-live``); the page works without that too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.controller import roles
from edgefleet.controller.buffers import device_buffers
from edgefleet.controller.console import charts, series
from edgefleet.controller.console.web import Viewer, back_to, fragment, page, require, runtime
from edgefleet.controller.roles import Operator
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import drift, updates

router = APIRouter()
LAGGING_AFTER_SECONDS = 600.0
"""Results older than this still on a device: worth a look (one status interval is not)."""
SHOWN = 10


def _failures(rt: Runtime, who: Operator) -> list[dict[str, Any]]:
    found = [
        *updates.list_updates(rt, who, outcome="rolled_back", limit=SHOWN),
        *updates.list_updates(rt, who, outcome="failed", limit=SHOWN),
    ]
    return sorted(found, key=lambda u: u["received_at"] or "", reverse=True)[:SHOWN]


def _lagging(rt: Runtime) -> list[Any]:
    late = [b for b in device_buffers(rt.engine) if b.lag_seconds >= LAGGING_AFTER_SECONDS]
    return sorted(late, key=lambda b: b.lag_seconds, reverse=True)[:SHOWN]


def _numbers(rt: Runtime, who: Operator) -> dict[str, Any]:
    health = series.fleet_health(rt.engine, rt.settings.device_interval_seconds)
    return {
        "health": health,
        "by_state": charts.fleet_states_chart(health),
        "by_site": charts.sites_chart(health),
        "revisions": series.revisions(rt.engine),
        "failures": _failures(rt, who),
        "lagging": _lagging(rt),
        "lag_after": LAGGING_AFTER_SECONDS,
        "alerts": drift.view(rt, hours=drift.GAUGE_HOURS, latest_only=True)["alerts"][:SHOWN],
    }


def _charts(rt: Runtime) -> list[Any]:
    day = series.last_day(datetime.now(UTC))
    status = series.status_per_bucket(rt.engine, day)
    return [
        charts.health_chart(status, title="Devices reporting (last 24 h)"),
        charts.results_chart(
            series.results_per_bucket(rt.engine, day), title="Results stored (last 24 h)"
        ),
        charts.latency_chart(status, title="Inference p95 (last 24 h)"),
    ]


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, cur: Viewer) -> Response:
    if cur.operator.role not in roles.READ:
        require(cur, roles.APPROVE)
        return back_to("/claims")  # an installer's one job here: devices asking to join
    rt = runtime(request)
    numbers = await run_in_threadpool(_numbers, rt, cur.operator)
    if fragment(request):
        return page(request, "overview_numbers.html", cur, **numbers)
    pictures = await run_in_threadpool(_charts, rt)
    return page(request, "overview.html", cur, charts=pictures, nav="overview", **numbers)
