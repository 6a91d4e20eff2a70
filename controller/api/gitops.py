"""Operator API: the fleet repositories (status, history, restore)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from edgefleet.controller.api.deps import Reader, RuntimeDep, Writer
from edgefleet.controller.services import gitops
from edgefleet.wire import Strict

router = APIRouter(prefix="/gitops", tags=["gitops"])


class Restore(Strict):
    commit: str = Field(min_length=4, max_length=64, pattern=r"^[0-9a-fA-F]+$")
    reason: str = Field(default="", max_length=500)


@router.get("")
def status(who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    return gitops.status(rt)


@router.get("/{repository}/log")
def log(
    repository: str,
    who: Reader,
    rt: RuntimeDep,
    n: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> list[dict[str, str]]:
    return gitops.log(rt, repository, n)


@router.post("/{repository}/restore")
def restore(repository: str, req: Restore, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    """Bring back the device assignments an earlier commit shows, as a new commit."""
    return gitops.restore(rt, who, repository, req.commit, req.reason)
