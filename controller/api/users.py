"""Operator API: users, the audit log, and the controller's own identity."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from edgefleet.controller.api.deps import Admin, AnyOperator, Reader, RuntimeDep
from edgefleet.controller.services import audit, users
from edgefleet.wire import Strict

router = APIRouter(tags=["users"])


class UserCreate(Strict):
    username: str
    role: str
    site: str | None = None


@router.post("/users", status_code=201)
def create_user(req: UserCreate, who: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return users.create_user(rt.engine, who, req.username, req.role, req.site)


@router.get("/users")
def list_users(who: Admin, rt: RuntimeDep) -> list[dict[str, Any]]:
    return users.list_users(rt.engine)


@router.post("/users/{username}/disable")
def disable_user(username: str, who: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return users.disable_user(rt.engine, who, username)


class PasswordSet(Strict):
    password: str
    current: str | None = None
    """Your current password, when you set your own and are not an admin."""


@router.post("/users/{username}/password")
def set_password(
    username: str, req: PasswordSet, who: AnyOperator, rt: RuntimeDep
) -> dict[str, Any]:
    """Set a console password; every console session of that user ends."""
    return users.set_password(rt.engine, who, username, req.password, req.current)


@router.get("/audit")
def audit_log(
    who: Admin, rt: RuntimeDep, limit: Annotated[int, Query(ge=1, le=10000)] = 100
) -> list[dict[str, Any]]:
    return audit.recent(rt.engine, limit)


@router.get("/controller")
def controller_info(who: Reader, rt: RuntimeDep) -> dict[str, Any]:
    return {
        "controller_id": rt.controller_id,
        "url": rt.settings.effective_public_url,
        "root_pins": rt.authority.root_pins,
    }
