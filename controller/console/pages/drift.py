"""Drift: each site's models scored over time against their references (one chart per
site, a line per model version), and the groups in alert, as ``edgefleet drift show``."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from edgefleet.controller import roles
from edgefleet.controller.console import charts
from edgefleet.controller.console.web import Viewer, page, require, runtime
from edgefleet.controller.runtime import PARENT_KEY, Runtime
from edgefleet.controller.services import drift, shadow

router = APIRouter()
SERIES_CSS = ("ef-series-1", "ef-series-2", "ef-bad", "ef-ok")


def site_charts(groups: list[dict[str, Any]]) -> list[tuple[str, Markup]]:
    """(site, chart of worst PSI per window start, one line per model version)."""
    by_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in groups:
        by_site[g["site"]].append(g)
    out = []
    for site, found in sorted(by_site.items()):
        starts = sorted({p["start"] for g in found for p in g["series"]})
        seconds = min(p["seconds"] for g in found for p in g["series"])
        lines = []
        for i, g in enumerate(found):
            psi = {p["start"]: p["psi"] for p in g["series"]}
            label = f"{g['model']} {g['version'].split(':', 1)[-1][:8]}"
            lines.append(charts.Line(label, [psi.get(s) for s in starts], SERIES_CSS[i % 4]))
        chart = charts.time_chart(
            f"{site}: worst PSI per window",
            [datetime.fromtimestamp(s, UTC) for s in starts],
            timedelta(seconds=seconds),
            lines,
        )
        out.append((site, chart))
    return out


def _drift(rt: Runtime, site: str | None, model: str | None) -> dict[str, Any]:
    shown = drift.view(rt, site=site, model=model)
    parent = shadow.view(rt, by="site", key=PARENT_KEY, site=site, model=model)
    return {**shown, "charts": site_charts(shown["groups"]), "parents": parent["groups"]}


@router.get("/drift", response_class=HTMLResponse)
async def drift_page(
    request: Request, cur: Viewer, site: str | None = None, model: str | None = None
) -> HTMLResponse:
    require(cur, roles.READ)
    found = await run_in_threadpool(_drift, runtime(request), site or None, model or None)
    return page(request, "drift.html", cur, nav="drift", site=site, model=model, **found)
