"""Operator API: devices."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.api.deps import Approver, Reader, RuntimeDep, Writer
from edgefleet.controller.services import devices
from edgefleet.wire import Strict

router = APIRouter(prefix="/devices", tags=["devices"])


class Assign(Strict):
    profile: str = Field(min_length=1, max_length=128)
    revision: int | None = Field(default=None, ge=1)
    """Pin this revision; unset follows the profile's latest."""


@router.get("")
async def list_devices(
    who: Reader,
    rt: RuntimeDep,
    site: str | None = None,
    state: str | None = None,
    label: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    return await run_in_threadpool(
        devices.list_devices,
        rt,
        who,
        site=site,
        state=state,
        labels=label,
        limit=limit,
        offset=offset,
    )


@router.get("/{device_id}")
def show_device(device_id: str, who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    return devices.get_device(rt, who, device_id)


@router.post("/{device_id}/approve")
def approve(device_id: str, who: Approver, rt: RuntimeDep) -> dict[str, Any]:
    return devices.approve(rt, who, device_id)


@router.post("/{device_id}/reject")
def reject(device_id: str, who: Approver, rt: RuntimeDep) -> dict[str, Any]:
    return devices.reject(rt, who, device_id)


@router.post("/{device_id}/decommission")
def decommission(device_id: str, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    return devices.decommission(rt, who, device_id)


@router.post("/{device_id}/assign")
def assign(device_id: str, req: Assign, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    """Give the device a profile: its latest revision, or the one given (pinned)."""
    return devices.assign(rt, who, device_id, req.profile, req.revision)


@router.post("/{device_id}/retry-update")
def retry_update(device_id: str, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    """Try the desired revision again on the device, even where a slot rolled it back."""
    return devices.retry_update(rt, who, device_id)
