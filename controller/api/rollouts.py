"""Operator API: rollouts. Readers may plan and watch; operators create and act."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from edgefleet.controller.api.deps import Reader, RowId, RuntimeDep, Writer
from edgefleet.controller.rollouts.spec import RolloutSpec
from edgefleet.controller.services import rollout_actions, rollout_views, rollouts
from edgefleet.wire import REVISION_MAX, Strict

router = APIRouter(tags=["rollouts"])

Reason = Annotated[str, Field(default="", max_length=1024)]


class RolloutCreate(RolloutSpec):
    reason: Reason = ""
    """Why: recorded with the rollout and named in its commits."""


class Why(Strict):
    reason: Reason = ""


@router.post("/rollouts/plan")
def plan_rollout(spec: RolloutSpec, who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    """The waves ``spec`` would make now; its answer's ``spec`` (with the seed) is what to
    create to get exactly these waves."""
    return rollouts.plan(rt, who, spec, datetime.now(UTC))


@router.post("/rollouts", status_code=201)
def create_rollout(req: RolloutCreate, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    spec = RolloutSpec.model_validate(req.model_dump(exclude={"reason"}))
    return rollout_actions.create(rt, who, spec, req.reason, datetime.now(UTC))


@router.get("/rollouts")
def list_rollouts(
    who: Reader,
    rt: RuntimeDep,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    return rollout_views.list_rollouts(rt, state, limit)


@router.get("/rollouts/engine")
def rollout_engine(who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    """Which process drives rollouts now, and until when its lease runs."""
    return rollout_views.engine_status(rt)


@router.get("/rollouts/{rollout_id}")
def show_rollout(rollout_id: RowId, who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    return rollout_views.get_rollout(rt, rollout_id)


@router.get("/rollouts/{rollout_id}/devices")
def rollout_devices(
    rollout_id: RowId,
    who: Reader,
    rt: RuntimeDep,
    wave: Annotated[int | None, Query(ge=1, le=REVISION_MAX)] = None,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[dict[str, Any]]:
    """Which devices are in which wave, and how each update went."""
    return rollout_views.rollout_devices(rt, rollout_id, wave, state, limit)


@router.post("/rollouts/{rollout_id}/pause")
def pause_rollout(rollout_id: RowId, req: Why, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    return rollout_actions.pause(rt, who, rollout_id, req.reason)


@router.post("/rollouts/{rollout_id}/resume")
def resume_rollout(rollout_id: RowId, req: Why, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    return rollout_actions.resume(rt, who, rollout_id, req.reason)


@router.post("/rollouts/{rollout_id}/abort")
def abort_rollout(rollout_id: RowId, req: Why, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    return rollout_actions.abort(rt, who, rollout_id, req.reason)


@router.post("/rollouts/{rollout_id}/rollback")
def rollback_rollout(rollout_id: RowId, req: Why, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    return rollout_actions.rollback(rt, who, rollout_id, req.reason)
