"""Operator API: registration tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edgefleet.controller.api.deps import Reader, RuntimeDep, Writer
from edgefleet.controller.services import tokens
from edgefleet.controller.services.tokens import TokenCreate

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=201)
def create(req: TokenCreate, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    """The answer carries the token and a ready registration file: shown this once."""
    return tokens.create_token(rt, who, req)


@router.get("")
def list_tokens(who: Reader, rt: RuntimeDep) -> list[dict[str, Any]]:
    return tokens.list_tokens(rt)


@router.post("/{kid}/revoke")
def revoke(kid: str, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    return tokens.revoke_token(rt, who, kid)
