"""Operator API: drift in the fleet (``services/drift.py``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from edgefleet.controller.api.deps import Reader, RuntimeDep
from edgefleet.controller.services import drift, shadow

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


@router.get("/drift/agreement")
async def show_agreement(
    who: Reader,
    rt: RuntimeDep,
    by: Literal["site", "device", "model", "profile"] = "site",
    key: Annotated[str | None, Query(max_length=256)] = None,
    site: Annotated[str | None, Query(max_length=128)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    hours: Annotated[float, Query(gt=0, le=24 * 90)] = shadow.DEFAULT_HOURS,
) -> dict[str, Any]:
    """Shadow comparisons over the last ``hours``: top-1 agreement, mean absolute
    difference and each model's latency, per group and comparison ``key`` (``parent``: a
    quantized model against its full-precision parent; ``rollout-<id>``: a rollout's
    shadow phase)."""
    return await run_in_threadpool(
        shadow.view, rt, by=by, key=key, site=site, model=model, hours=hours
    )
