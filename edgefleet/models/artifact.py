"""The layout of a model artifact, written and read in one place (as fluxcd's meta.go).

    manifest   artifactType  application/vnd.cncf.model.manifest.v1+json
               annotations   name, version, variant, signature (JSON)
    config     application/vnd.cncf.model.config.v1+json   ModelPack config, format onnx
    layer 0    application/vnd.cncf.model.weight.v1.raw    the .onnx file, titled by name
    layer 1    application/vnd.edgefleet.model.probe.v1+json   the golden probe
    layer 2    application/vnd.edgefleet.model.drift-reference.v1+json
                                                the reference distributions, when pushed
                                                with --reference (edgefleet.drift)

An artifact another client pushed with just an ``.onnx`` file (e.g. ``oras push``) is
read too: its model is the one layer titled ``*.onnx``; it has no signature or probe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edgefleet.models.signature import Signature
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.errors import NotAModel
from edgefleet.oci.manifest import Descriptor, Manifest

PROBE_FILE = "edgefleet-probe.json"
REFERENCE_FILE = "edgefleet-drift-reference.json"


def config_bytes(
    *,
    name: str,
    version: str,
    precision: str,
    quantization: str | None,
    param_size: str,
    diff_ids: list[str],
) -> bytes:
    """The ModelPack config. No creation time: pushing the same file under the same name
    and version gives the same digest, so a re-push changes nothing on the devices."""
    config: dict[str, str] = {"format": "onnx", "paramSize": param_size, "precision": precision}
    if quantization:
        config["quantization"] = quantization
    doc = {
        "descriptor": {"name": name, "version": version},
        "config": config,
        "modelfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def file_annotations(filename: str) -> dict[str, str]:
    """A layer's file name, under the OCI key (oras) and ModelPack's own."""
    return {mt.ANNOTATION_TITLE: filename, mt.ANNOTATION_FILEPATH: filename}


def manifest_annotations(
    name: str, version: str, variant: str, signature: Signature
) -> dict[str, str]:
    return {
        mt.ANNOTATION_NAME: name,
        mt.ANNOTATION_VERSION: version,
        mt.ANNOTATION_VARIANT: variant,
        mt.ANNOTATION_SIGNATURE: signature.to_json(),
    }


@dataclass(frozen=True)
class ModelManifest:
    """What a device and an operator need to know of a model artifact."""

    model: Descriptor
    """The ``.onnx`` layer."""
    probe: Descriptor | None
    signature: Signature | None
    name: str | None
    version: str | None
    variant: str | None
    modelpack: bool
    """True when the artifact uses the ModelPack artifact type and config."""
    reference: Descriptor | None = None
    """The drift reference layer, when the model was pushed with one."""


def describe(manifest: Manifest) -> ModelManifest:
    """Find the model, its probe and signature in a manifest, or say why it holds none."""
    weights = [d for d in manifest.layers if d.media_type == mt.MODEL_WEIGHT_RAW]
    if not weights:
        weights = [d for d in manifest.layers if (d.title or "").endswith(mt.ONNX_SUFFIX)]
    if len(weights) != 1:
        found = ", ".join(f"{d.media_type} {d.title or d.digest}" for d in manifest.layers)
        raise NotAModel(
            f"reading the model artifact: expected one {mt.MODEL_WEIGHT_RAW} layer or one "
            f"layer titled *.onnx, found {len(weights)} among: {found or 'no layers'}"
        )
    probes = [d for d in manifest.layers if d.media_type == mt.EDGEFLEET_PROBE]
    references = [d for d in manifest.layers if d.media_type == mt.EDGEFLEET_DRIFT_REFERENCE]
    notes = manifest.annotations
    signature = notes.get(mt.ANNOTATION_SIGNATURE)
    return ModelManifest(
        model=weights[0],
        probe=probes[0] if probes else None,
        signature=Signature.from_json(signature) if signature else None,
        name=notes.get(mt.ANNOTATION_NAME),
        version=notes.get(mt.ANNOTATION_VERSION),
        variant=notes.get(mt.ANNOTATION_VARIANT),
        modelpack=manifest.artifact_type == mt.MODEL_ARTIFACT
        and manifest.config.media_type == mt.MODEL_CONFIG,
        reference=references[0] if references else None,
    )
