"""Push an artifact: its blobs (skipping those the registry has), then its manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.oci import digest as dg
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.manifest import Descriptor, Manifest
from edgefleet.oci.reference import check_repository, check_tag


@dataclass(frozen=True)
class Blob:
    """A blob to push: its descriptor and where its bytes are."""

    descriptor: Descriptor
    source: bytes | Path

    @classmethod
    def of_bytes(
        cls, media_type: str, data: bytes, annotations: dict[str, str] | None = None
    ) -> Blob:
        return cls(Descriptor(media_type, dg.of_bytes(data), len(data), annotations or {}), data)

    @classmethod
    def of_file(
        cls, media_type: str, path: Path, annotations: dict[str, str] | None = None
    ) -> Blob:
        return cls(
            Descriptor(media_type, dg.of_file(path), path.stat().st_size, annotations or {}), path
        )


def push(
    client: RegistryClient,
    repository: str,
    tag: str,
    config: Blob,
    layers: list[Blob],
    *,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> str:
    """Upload what is missing, then tag the manifest; returns the manifest's digest."""
    check_repository(repository)
    check_tag(tag)
    for blob in (config, *layers):
        d = blob.descriptor
        if client.blob_size(repository, d.digest) != d.size:
            client.upload_blob(repository, d.digest, blob.source)
    manifest = Manifest(
        config.descriptor,
        [layer.descriptor for layer in layers],
        artifact_type,
        annotations or {},
    )
    return client.put_manifest(repository, tag, manifest.to_bytes(), manifest.media_type)
