"""Operator API: rollouts. For now the dry run, which changes nothing: readers may plan."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from edgefleet.controller.api.deps import Reader, RuntimeDep
from edgefleet.controller.rollouts.spec import RolloutSpec
from edgefleet.controller.services import rollouts

router = APIRouter(tags=["rollouts"])


@router.post("/rollouts/plan")
def plan_rollout(spec: RolloutSpec, who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    """The waves ``spec`` would make now; its answer's ``spec`` (with the seed) is what to
    create to get exactly these waves."""
    return rollouts.plan(rt, who, spec, datetime.now(UTC))
