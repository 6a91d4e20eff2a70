"""Operator API: sites and profiles."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from edgefleet.controller import model_pins
from edgefleet.controller.api.deps import Reader, RuntimeDep, Writer
from edgefleet.controller.gitops import fleet
from edgefleet.controller.services import profiles, sites
from edgefleet.wire import REVISION_MAX, Strict

router = APIRouter(tags=["sites", "profiles"])


Window = Annotated[str, Field(min_length=1, max_length=64)]


class SiteCreate(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    timezone: str = "UTC"
    labels: dict[str, str] = Field(default_factory=dict)
    maintenance_windows: list[Window] = Field(default_factory=list)
    """``Mon-Fri 01:00-05:00`` etc. in the site's time zone; none: any time."""


class SiteWindows(Strict):
    windows: list[Window]
    """The site's new windows, replacing the old; an empty list clears them."""


class ProfileApply(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9][a-z0-9.-]*$")
    spec: dict[str, Any] = Field(default_factory=dict)
    """The profile document without its name; checked against profiles/schema.json."""
    hold: bool = False
    """Keep the profile's followers on the revision they get now: a rollout brings
    them this one in waves."""


class ProfileRelease(Strict):
    revision: int | None = Field(ge=1, le=REVISION_MAX)
    """The revision the profile's followers get from now; None: always the latest."""
    reason: str = Field(default="", max_length=1024)


@router.post("/sites", status_code=201)
def create_site(req: SiteCreate, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    with rt.gitops.change(who.username) as change:
        site = sites.create_site(
            rt.engine, who, req.name, req.timezone, req.labels, req.maintenance_windows
        )
        change.why, change.sites = f"{who.username} created site {req.name}", {req.name}
    return {**site, "gitops": change.outcome.public()}


@router.get("/sites")
def list_sites(who: Reader, rt: RuntimeDep) -> list[dict[str, Any]]:
    return sites.list_sites(rt.engine)


@router.put("/sites/{name}/maintenance-windows")
def set_site_windows(name: str, req: SiteWindows, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    """No GitOps change: windows shape when rollouts run, not what devices are told."""
    return sites.set_windows(rt.engine, who, name, req.windows)


@router.post("/profiles")
def apply_profile(req: ProfileApply, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    with rt.gitops.change(who.username) as change:
        pin = functools.partial(model_pins.pin, rt.settings, rt.registry_tokens)
        profile, created = profiles.apply_profile(
            rt.engine, who, req.name, req.spec, pin, hold=req.hold
        )
        change.sites = set()
        if created:
            rt.changed()
            change.why = f"{who.username} applied profile {req.name} revision {profile['revision']}"
            if profile["released_revision"] is None:
                change.sites = set(fleet.sites_following(rt.engine, req.name))
    if not created:
        return {**profile, "created_revision": False}
    return {**profile, "created_revision": True, "gitops": change.outcome.public()}


@router.post("/profiles/{name}/release")
def release_profile(name: str, req: ProfileRelease, who: Writer, rt: RuntimeDep) -> dict[str, Any]:
    """Give the profile's followers a revision at once (no waves): for a profile held
    back by ``apply --hold`` or a rollout, or to let it follow its latest again."""
    with rt.gitops.change(who.username) as change:
        profile = profiles.release(rt.engine, who, name, req.revision, req.reason)
        change.sites = set()
        if profile.pop("changed"):
            rt.changed()
            shown = req.revision if req.revision is not None else "the latest revision"
            change.why = f"{who.username} released profile {name} at {shown}" + (
                f": {req.reason}" if req.reason else ""
            )
            change.sites = set(fleet.sites_following(rt.engine, name))
    return {**profile, "gitops": change.outcome.public()}


@router.get("/profiles")
def list_profiles(who: Reader, rt: RuntimeDep) -> list[dict[str, Any]]:
    return profiles.list_profiles(rt.engine)


@router.get("/profiles/{name}")
def show_profile(
    name: str,
    who: Reader,
    rt: RuntimeDep,
    revision: Annotated[int | None, Query(ge=1, le=REVISION_MAX)] = None,
) -> dict[str, Any]:
    return profiles.get_profile(rt.engine, name, revision)


@router.get("/profiles/{name}/diff")
def diff_profile(
    name: str,
    who: Reader,
    rt: RuntimeDep,
    a: Annotated[int | None, Query(ge=1, le=REVISION_MAX)] = None,
    b: Annotated[int | None, Query(ge=1, le=REVISION_MAX)] = None,
) -> dict[str, Any]:
    """A unified diff of revisions ``a`` and ``b`` (default: the latest two)."""
    return profiles.diff_profile(rt.engine, name, a, b)
