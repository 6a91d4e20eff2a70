"""OCI image manifests and descriptors, to and from JSON, in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edgefleet.oci import mediatypes as mt
from edgefleet.oci.errors import OciError
from edgefleet.oci.reference import check_digest


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str | None:
        return self.annotations.get(mt.ANNOTATION_TITLE) or self.annotations.get(
            mt.ANNOTATION_FILEPATH
        )

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: str) -> Descriptor:
        try:
            size = doc["size"]
            if not isinstance(size, int) or size < 0:
                raise TypeError("size")
            return cls(
                str(doc["mediaType"]),
                check_digest(str(doc["digest"])),
                size,
                {str(k): str(v) for k, v in (doc.get("annotations") or {}).items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise OciError(f"reading the manifest: {where} is not a valid descriptor") from exc


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: list[Descriptor]
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    media_type: str = mt.OCI_MANIFEST

    def to_bytes(self) -> bytes:
        """Compact JSON with keys in a fixed order: the same manifest, the same digest."""
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        doc["config"] = self.config.to_json()
        doc["layers"] = [layer.to_json() for layer in self.layers]
        if self.annotations:
            doc["annotations"] = dict(sorted(self.annotations.items()))
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str | None = None) -> Manifest:
        """Parse an image manifest; an index or anything else is refused by name."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise OciError("reading the manifest: it is not JSON (or nested too deeply)") from exc
        if not isinstance(doc, dict):
            raise OciError("reading the manifest: it is not a JSON object")
        kind = doc.get("mediaType") or media_type or mt.OCI_MANIFEST
        if kind not in (mt.OCI_MANIFEST, mt.DOCKER_MANIFEST):
            raise OciError(
                f"reading the manifest: it is a {kind}, not an image manifest; point the "
                "reference at a single model artifact"
            )
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise OciError("reading the manifest: it has no list of layers")
        artifact_type = doc.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise OciError("reading the manifest: its artifactType is not a string")
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise OciError("reading the manifest: its annotations are not a JSON object")
        return cls(
            Descriptor.from_json(doc.get("config"), "config"),
            [Descriptor.from_json(d, f"layer {i}") for i, d in enumerate(layers)],
            artifact_type,
            {str(k): str(v) for k, v in annotations.items()},
            kind,
        )
