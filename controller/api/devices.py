"""Operator API: devices."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.api.deps import Approver, Reader, RuntimeDep, Writer
from edgefleet.controller.services import devices, replacement
from edgefleet.wire import REVISION_MAX, Strict

router = APIRouter(prefix="/devices", tags=["devices"])


class Assign(Strict):
    profile: str = Field(min_length=1, max_length=128)
    revision: int | None = Field(default=None, ge=1, le=REVISION_MAX)
    """Pin this revision; unset follows the profile's latest."""


class Rename(Strict):
    name: str | None = Field(max_length=128)
    """None (or blank) clears the name."""


class Replace(Strict):
    new: str = Field(min_length=1, max_length=40)
    """The device that takes the old one's place."""
    reason: str = Field(default="", max_length=512)
    across_sites: bool = False
    """Move the new device to the old one's site if it enrolled at another."""


@router.get("")
async def list_devices(
    who: Reader,
    rt: RuntimeDep,
    response: Response,
    site: str | None = None,
    state: str | None = None,
    label: Annotated[list[str] | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=REVISION_MAX)] = 0,
) -> list[dict[str, Any]]:
    """A page of devices; ``q`` searches id prefix, name, serial and hostname. The
    ``X-Total-Count`` header counts every device the filters match."""
    rows, total = await run_in_threadpool(
        devices.page_of_devices,
        rt,
        who,
        limit=limit,
        offset=offset,
        site=site,
        state=state,
        labels=label,
        query=q,
    )
    response.headers["X-Total-Count"] = str(total)
    return rows


@router.get("/{device_id}")
def show_device(device_id: str, who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    return devices.get_device(rt, who, device_id)


@router.get("/{device_id}/history")
def history(device_id: str, who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    """The devices this one replaced and that replaced it, with their update reports and
    rollout places: what happened at this place in the fleet."""
    return replacement.history(rt, who, device_id)


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


@router.post("/{device_id}/rename")
def rename(device_id: str, req: Rename, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    """Name the device as people at its site call it (unique per site)."""
    return devices.rename(rt, who, device_id, req.name)


@router.post("/{device_id}/replace")
def replace(device_id: str, req: Replace, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    """Hand this device's name, labels, profile and history to ``new`` (an enrolled
    replacement), and decommission this one: one transaction, one commit."""
    return replacement.replace(
        rt, who, device_id, req.new, req.reason, across_sites=req.across_sites
    )
