"""Operator API: the controller's signing keys (admins only), and the registry's token
bundle, which is public (certificates only) so a registry's start script can fetch it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from edgefleet.controller.api.deps import Admin, RuntimeDep
from edgefleet.controller.services import key_rotation

router = APIRouter(tags=["keys"])


@router.get("/keys")
def list_keys(who: Admin, rt: RuntimeDep) -> list[dict[str, Any]]:
    return key_rotation.list_keys(rt)


@router.post("/keys/{kind}/rotate")
def rotate(kind: str, who: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return key_rotation.rotate(rt, who, kind)


@router.post("/keys/{kind}/promote")
def promote(kind: str, who: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return key_rotation.promote(rt, who, kind)


@router.post("/keys/{kind}/{kid}/retire")
def retire(kind: str, kid: str, who: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return key_rotation.retire(rt, who, kind, kid)


@router.get("/registry/bundle", response_class=Response)
def registry_bundle(rt: RuntimeDep) -> Response:
    """The registry's ``rootcertbundle``: the signing key's certificate, a staged one and
    previous ones still in their overlap. Give it to the registry after every rotate,
    promote and retire (and restart it)."""
    return Response(rt.keyring.registry().bundle_pem(), media_type="application/x-pem-file")
