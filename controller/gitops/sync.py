"""Render the fleet and write every repository whose files changed: the writer's one entry.

The controller calls ``sync`` after intent changes (profiles, revisions, assignments);
unchanged repositories get no commit. Repository objects are kept per process, so a
sync after a one-device change hashes and writes that device's repository only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from edgefleet.controller.gitops.model import FleetState, GitopsParams
from edgefleet.controller.gitops.render import render, repository_url
from edgefleet.controller.gitops.repository import Changes, Repository, RepositoryError

_open: dict[tuple[Path, str], Repository] = {}


def repository(root: Path, name: str, branch: str = "main") -> Repository:
    """The (cached) writer for ``<root>/<name>.git``, created if new."""
    path = Path(root).resolve() / f"{name}.git"
    key = (path, branch)
    repo = _open.get(key)
    if repo is None:
        repo = _open[key] = Repository.ensure(path, branch)
    return repo


class PushError(RuntimeError):
    """Commits are made locally but some repositories could not be pushed; the next sync
    tries again."""


def message(why: str, title: str | None = None) -> Callable[[Changes], str]:
    """A commit message from the changed paths: what (subject, device ids) and why.

    ``title``, when given, is the subject (a restore says what it reverts) and the
    changed devices move to the body."""

    def compose(changes: Changes) -> str:
        added = {_device(p) for p in changes.added} - {None}
        modified = {_device(p) for p in changes.modified} - {None}
        removed = {_device(p) for p in changes.removed} - {None}
        groups = (
            ("add", added - modified - removed),
            ("update", modified | (added & removed)),
            ("remove", removed - modified - added),
        )
        parts = []
        for verb, found in groups:
            ids = sorted(found)
            if ids:
                noun = "device" if len(ids) == 1 else "devices"
                shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
                parts.append(f"{verb} {len(ids)} {noun} ({shown})")
        subject = "; ".join(parts) or "update the repository layout"
        subject = subject[0].upper() + subject[1:]
        lines = [title, "", subject + ".", ""] if title else [subject, ""]
        if why:
            lines += [f"Why: {why}", ""]
        lines.append(
            f"Paths: {len(changes.added)} added, {len(changes.modified)} modified, "
            f"{len(changes.removed)} removed."
        )
        return "\n".join(lines)

    return compose


def _device(path: str) -> str | None:
    parts = path.split("/")
    if parts[0] == "devices" and len(parts) > 2:
        return parts[1]
    if parts[0] == "appliers" and len(parts) == 3:
        return parts[2].removesuffix(".yaml")
    return None


def sync(
    root: Path,
    params: GitopsParams,
    state: FleetState,
    who: str,
    why: str,
    title: str | None = None,
) -> dict[str, str | None]:
    """Render ``state`` and write it: ``{repository name: new commit or None}``.

    Repository names are site names (one repository per site), or ``fleet`` when
    ``params.per_site`` is off. With ``params.remote`` set, every rendered repository
    whose branch is ahead of what this process last pushed is pushed to the remote
    template's URL; failures raise ``PushError`` after the others were pushed.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    staged = {}
    for name, files in sorted(render(state, params).items()):
        pending = repository(root, name, params.branch).stage(files, message(why, title), who)
        staged[name] = pending
    if any(staged.values()):
        os.sync()  # every object on disk before any branch moves
        for pending in staged.values():
            if pending is not None:
                pending.repository.publish(pending, durable=False)
        os.sync()  # and the branches themselves, once for all
    failed = []
    if params.remote:
        for name in staged:
            try:
                repository(root, name, params.branch).push(repository_url(name, params))
            except RepositoryError as exc:
                failed.append(str(exc))
    if failed:
        raise PushError(f"{len(failed)} of {len(staged)} pushes failed: " + "; ".join(failed))
    return {name: pending.commit if pending else None for name, pending in staged.items()}
