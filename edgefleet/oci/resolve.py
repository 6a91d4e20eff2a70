"""Resolve a tag to the digest it names now, so a profile pins what it will run."""

from __future__ import annotations

from edgefleet.oci.client import RegistryClient
from edgefleet.oci.reference import Reference


def resolve(client: RegistryClient, reference: Reference) -> Reference:
    """``reference`` pinned to its manifest's digest.

    The manifest is read (not HEAD-ed) so that the digest is the hash of bytes we saw,
    checked against the registry's ``Docker-Content-Digest``. A reference that already
    carries a digest is checked to exist. A tag that does not resolve raises
    :class:`~edgefleet.oci.errors.ArtifactNotFound`.
    """
    fetched = client.get_manifest(reference.repository, reference.identifier)
    return reference.pinned(fetched.digest)
