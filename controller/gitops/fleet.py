"""The renderer's input read from the database: the intent the repositories project.

Only what the files show is read (ids, sites, assignments, the revisions in use), with
Core statements rather than ORM objects, so that one site's state costs a few
milliseconds and the whole fleet's a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select, tuple_
from sqlalchemy.engine import Engine

from edgefleet.controller.db import reading
from edgefleet.controller.gitops.model import Device, FleetState, Revision, Site
from edgefleet.controller.models import Device as DeviceRow
from edgefleet.controller.models import Profile, ProfileRevision
from edgefleet.controller.models import Site as SiteRow
from edgefleet.wire import DeviceState

RENDERED = (
    DeviceState.enrolled,
    DeviceState.ready,
    DeviceState.updating,
    DeviceState.degraded,
)
"""Devices that have a desired state: enrolled and not yet decommissioned. A device
awaiting approval has none until an operator approves it; a rejected one never does."""


def load(engine: Engine, sites: Collection[str] | None = None) -> FleetState:
    """The state of ``sites`` (every site when None): their devices and revisions."""
    device_q = (
        select(
            DeviceRow.id,
            SiteRow.name,
            DeviceRow.profile_id,
            DeviceRow.profile_revision,
            Profile.name,
            Profile.latest_revision,
            Profile.released_revision,
            DeviceRow.inventory["node"].as_string(),  # type: ignore[index]
        )
        .join(SiteRow, SiteRow.id == DeviceRow.site_id)
        .outerjoin(Profile, Profile.id == DeviceRow.profile_id)
        .where(DeviceRow.state.in_([s.value for s in RENDERED]))  # type: ignore[attr-defined]
    )
    site_q = select(SiteRow.name)
    if sites is not None:
        device_q = device_q.where(SiteRow.name.in_(list(sites)))  # type: ignore[attr-defined]
        site_q = site_q.where(SiteRow.name.in_(list(sites)))  # type: ignore[attr-defined]
    with reading(engine) as conn:
        site_names = list(conn.execute(site_q).scalars())
        devices, assignments, wanted = [], {}, set()
        for device_id, site, profile_id, pinned, profile, latest, released, node in conn.execute(
            device_q
        ):
            devices.append(Device(device_id, site, node=node))
            number = pinned or released or latest
            if profile_id is not None and number:
                assignments[device_id] = (profile, number)
                wanted.add((profile_id, number))
        revisions = []
        if wanted:
            rows = conn.execute(
                select(Profile.name, ProfileRevision.number, ProfileRevision.spec)
                .join(Profile, Profile.id == ProfileRevision.profile_id)
                .where(
                    tuple_(ProfileRevision.profile_id, ProfileRevision.number).in_(sorted(wanted))
                )
            )
            revisions = [Revision(name, number, spec) for name, number, spec in rows]
    return FleetState(
        sites=[Site(name) for name in site_names],
        devices=devices,
        revisions=revisions,
        assignments=assignments,
    )


def sites_following(engine: Engine, profile: str) -> list[str]:
    """Sites with a rendered device that follows ``profile`` (no pinned revision): where
    a change of the revision its followers get changes the repository."""
    query = (
        select(SiteRow.name)
        .distinct()
        .join(DeviceRow, DeviceRow.site_id == SiteRow.id)
        .join(Profile, Profile.id == DeviceRow.profile_id)
        .where(
            Profile.name == profile,
            DeviceRow.profile_revision.is_(None),  # type: ignore[union-attr]
            DeviceRow.state.in_([s.value for s in RENDERED]),  # type: ignore[attr-defined]
        )
    )
    with reading(engine) as conn:
        return sorted(conn.execute(query).scalars())
