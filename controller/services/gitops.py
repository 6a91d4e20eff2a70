"""Operator actions on the fleet repositories: status, history, restore.

The database holds intent and the repositories are its projection, so a restore is a
change of intent: the devices of an earlier commit get back the profile revisions that
commit shows, pinned, and the writer then commits the result with a subject saying what
it reverts. A restore done in Git alone would be undone by the next write.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from sqlalchemy import select

from edgefleet.controller.db import session_scope
from edgefleet.controller.gitops.fleet import RENDERED
from edgefleet.controller.gitops.render import CONFIGMAP
from edgefleet.controller.gitops.repository import Repository, RepositoryError
from edgefleet.controller.models import Device, Profile, Site
from edgefleet.controller.roles import Operator
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit
from edgefleet.errors import BadRequest, NotFound

_NAME = re.compile(r"^[A-Za-z0-9%_-][A-Za-z0-9%._-]{0,383}$")


def status(rt: Runtime) -> dict[str, Any]:
    """The writer's state and every repository with its branch head."""
    out = rt.gitops.status()
    root = rt.gitops.root
    names = sorted(p.name.removesuffix(".git") for p in root.glob("*.git")) if root.is_dir() else []
    branch = rt.gitops.params.branch
    out["repository_heads"] = {n: Repository(root / f"{n}.git", branch).head() for n in names}
    return out


def repository(rt: Runtime, name: str) -> Repository:
    """The repository called ``name`` (a site's name, or ``fleet``), or 404."""
    path = rt.gitops.root / f"{name}.git"
    if not _NAME.match(name) or not path.is_dir():
        raise NotFound(
            f"no fleet repository {name!r}; `edgefleet gitops status` lists them",
            code="no_repository",
        )
    return Repository(path, rt.gitops.params.branch)


def log(rt: Runtime, name: str, n: int) -> list[dict[str, str]]:
    try:
        return repository(rt, name).log(n)
    except RepositoryError as exc:
        raise BadRequest(str(exc), code="repository_error") from exc


def restore(rt: Runtime, who: Operator, name: str, revision: str, reason: str) -> dict[str, Any]:
    """Give the devices of ``revision`` in repository ``name`` the profile revisions it
    shows, pinned. Devices gone since (decommissioned, or unknown) are listed as skipped;
    devices enrolled since keep what they have."""
    repo = repository(rt, name)
    try:
        commit, subject = repo.commit_of(revision)
        files = repo.read(commit, "devices", "desired.yaml")
    except RepositoryError as exc:
        raise NotFound(str(exc), code="no_commit") from exc
    wanted = {path.split("/")[1]: _assignment(path, data) for path, data in files.items()}
    skipped: dict[str, str] = {}
    changed: list[str] = []
    with rt.gitops.change(who.username) as change:
        with session_scope(rt.engine) as s:
            rows = s.execute(
                select(Device, Site.name)
                .join(Site, Site.id == Device.site_id)
                .where(Device.id.in_(list(wanted)))  # type: ignore[attr-defined]
                .with_for_update()
            ).all()
            found = {device.id: (device, site) for device, site in rows}
            names = {p for p, _ in wanted.values() if p}
            profiles = {
                p.name: p
                for p in s.scalars(select(Profile).where(Profile.name.in_(names)))  # type: ignore[attr-defined]
            }
            sites: set[str] = set()
            for device_id, (profile_name, number) in sorted(wanted.items()):
                if device_id not in found:
                    skipped[device_id] = "no longer known"
                    continue
                device, site = found[device_id]
                if device.state not in RENDERED:
                    skipped[device_id] = f"now {device.state}"
                    continue
                profile = profiles.get(profile_name) if profile_name else None
                if profile_name and profile is None:
                    skipped[device_id] = f"profile {profile_name!r} no longer exists"
                    continue
                target = (profile.id if profile else None, number if profile else None)
                if (device.profile_id, device.profile_revision) != target:
                    device.profile_id, device.profile_revision = target
                    changed.append(device_id)
                sites.add(site)
            audit.record(
                s,
                who,
                "gitops.restore",
                name,
                commit=commit,
                reason=reason,
                devices=len(changed),
                skipped=len(skipped),
            )
        if changed:
            rt.changed()
        change.title = f"Revert to {commit[:12]}: {subject}"
        change.why = f"{who.username} restored {commit}" + (f": {reason}" if reason else "")
        change.sites = sites or ({name} if rt.gitops.params.per_site else None)
    return {
        "repository": name,
        "restored": commit,
        "subject": subject,
        "devices": changed,
        "skipped": skipped,
        "gitops": change.outcome.public(),
    }


def _assignment(path: str, data: bytes) -> tuple[str | None, int]:
    for doc in yaml.safe_load_all(data):
        if isinstance(doc, dict) and doc.get("metadata", {}).get("name") == CONFIGMAP:
            values = doc.get("data", {})
            return values.get("profile") or None, int(values.get("revision") or 0)
    raise NotFound(f"{path} holds no {CONFIGMAP} ConfigMap", code="no_commit")
