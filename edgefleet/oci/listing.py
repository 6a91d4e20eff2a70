"""List what a registry holds: repositories and their tags."""

from __future__ import annotations

from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import ArtifactNotFound
from edgefleet.oci.reference import check_repository


def list_tags(client: RegistryClient, repository: str | None = None) -> dict[str, list[str]]:
    """Repository to its sorted tags: one repository, or every one in the catalog.

    A repository in the catalog whose tags are all deleted is listed with none.
    """
    names = [check_repository(repository)] if repository else sorted(client.catalog())
    listing: dict[str, list[str]] = {}
    for name in names:
        try:
            listing[name] = sorted(client.tags(name))
        except ArtifactNotFound:
            if repository:
                raise
            listing[name] = []
    return listing
