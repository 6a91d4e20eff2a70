"""The renderer's input: plain, frozen data, so that rendering needs no database.

The controller builds these from its tables; tests and the benchmark build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

Applier = Literal["flux", "argocd"]
Mode = Literal["k3s", "direct"]

if TYPE_CHECKING:
    from edgefleet.controller.settings import Settings


@dataclass(frozen=True)
class Site:
    name: str


@dataclass(frozen=True)
class Device:
    id: str
    site: str
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    mode: Mode | None = None
    """``k3s`` devices get applier objects; ``direct`` devices read desired.yaml's state
    through the device API. Unset: the assigned revision's ``mode``, else ``k3s``."""
    node: str | None = None
    """The Kubernetes node the device's agent reported (K3s mode): its upgrade Plans
    select it. Unknown: they select the node labelled ``edgefleet.io/device``."""


@dataclass(frozen=True)
class Revision:
    """One immutable profile revision; ``spec`` has the profile JSON Schema's keys."""

    profile: str
    number: int
    spec: dict[str, Any] = field(hash=False, compare=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.profile, self.number)


@dataclass
class FleetState:
    """Everything the fleet repository shows: sites, devices, revisions, assignments."""

    sites: list[Site]
    devices: list[Device]
    revisions: list[Revision]
    assignments: dict[str, tuple[str, int]] = field(default_factory=dict)
    """device id -> (profile, revision number); a device without one gets an empty state."""


@dataclass(frozen=True)
class GitopsParams:
    """The settings that shape the repository (``gitops_*`` in the controller's settings)."""

    applier: Applier = "flux"
    per_site: bool = True
    """One repository per site, so a site can read only its own desired state; False puts
    the whole fleet in one repository named ``fleet``."""
    remote: str | None = None
    """URL template with ``{site}`` (the repository name) to push to after each commit,
    e.g. ``https://git.example/fleet/{site}.git``; it is also the URL the appliers pull."""
    branch: str = "main"
    interval: str = "1m"
    """How often the site's Flux or Argo CD looks at the repository."""

    @classmethod
    def from_settings(cls, settings: Settings) -> GitopsParams:
        return cls(
            applier=settings.gitops_applier,
            per_site=settings.gitops_repositories == "per-site",
            remote=settings.gitops_remote,
            branch=settings.gitops_branch,
        )


def repository_root(settings: Settings) -> Path:
    """``gitops_root``, else ``<data_dir>/gitops``."""
    return settings.gitops_root or settings.data_dir / "gitops"
