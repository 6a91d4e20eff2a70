"""Operator API: drift in the fleet (``services/drift.py``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from edgefleet.controller.api.deps import Reader, RuntimeDep
from edgefleet.controller.services import drift

router = APIRouter(tags=["drift"])


@router.get("/drift")
async def show_drift(
    who: Reader,
    rt: RuntimeDep,
    site: Annotated[str | None, Query(max_length=128)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    by: Literal["site", "device"] = "site",
    hours: Annotated[float, Query(gt=0, le=24 * 90)] = drift.DEFAULT_HOURS,
) -> dict[str, Any]:
    """Scores over the last ``hours`` per site, profile, model version and reference (or
    per device), each window's devices summed, and the groups in alert."""
    return await run_in_threadpool(drift.view, rt, site=site, model=model, by=by, hours=hours)
