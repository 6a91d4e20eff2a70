"""Update reports: devices upload how an update attempt ended; operators read them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.api.deps import CurrentDevice, Reader, RowId, RuntimeDep
from edgefleet.controller.services import updates
from edgefleet.wire import UpdateAck, UpdateReport

router = APIRouter(tags=["updates"])


@router.post("/devices/{device_id}/updates", response_model=UpdateAck)
async def report_update(
    device_id: CurrentDevice, report: UpdateReport, rt: RuntimeDep
) -> UpdateAck:
    """Idempotent on (revision, started_at): a re-upload answers with the same record."""
    return await run_in_threadpool(updates.store, rt, device_id, report)


@router.get("/updates")
async def list_updates(
    who: Reader,
    rt: RuntimeDep,
    device: str | None = None,
    outcome: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return await run_in_threadpool(
        updates.list_updates, rt, who, device=device, outcome=outcome, limit=limit
    )


@router.get("/updates/{update_id}")
def show_update(update_id: RowId, who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    return updates.get_update(rt, who, update_id)
