"""Media types and annotation keys, named once.

The model artifact follows the CNCF ModelPack specification (``modelpack/model-spec``):
an OCI image manifest whose ``artifactType`` says "model", a ModelPack config, the
``.onnx`` file as one raw weight layer. Edgefleet adds one small JSON layer of its own,
the golden probe, and the input/output signature as a manifest annotation, so that a
listing shows it without fetching a blob.
"""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST))
"""What a manifest GET accepts: everything a registry may hold under a tag, so that a
tag pointing at something else is reported as such rather than as "not found"."""

MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODEL_WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"

EDGEFLEET_PROBE = "application/vnd.edgefleet.model.probe.v1+json"
"""The golden probe layer: input tensors, the expected outputs, and the tolerance."""
EDGEFLEET_DRIFT_REFERENCE = "application/vnd.edgefleet.model.drift-reference.v1+json"
"""The reference distributions layer (``push --reference``): histograms of representative
inputs and of the model's outputs, for drift scores (``edgefleet.drift.reference``)."""

ANNOTATION_TITLE = "org.opencontainers.image.title"
"""The file name: ``oras pull`` writes a layer under it."""
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
"""ModelPack's own key for a layer's file path."""
ANNOTATION_SIGNATURE = "dev.edgefleet.model.signature"
"""Manifest annotation: the model's inputs and outputs as compact JSON."""
ANNOTATION_NAME = "dev.edgefleet.model.name"
ANNOTATION_VARIANT = "dev.edgefleet.model.variant"
"""``fp32`` for the file as given, ``int8`` for its dynamically quantized twin."""

ONNX_SUFFIX = ".onnx"

MODEL_SIGNATURE = "application/vnd.edgefleet.model.signature.v1+json"
"""``artifactType`` of the manifest under a model's ``sha256-<hex>.sig`` tag."""
MODEL_SIGNATURE_PAYLOAD = "application/vnd.edgefleet.model.signature.payload.v1+json"
"""One layer per signature: the signed payload (``edgefleet.models.signing.payload``)."""
ANNOTATION_SIGNATURE_VALUE = "dev.edgefleet.signature.value"
"""On a signature layer: the signature, base64."""
ANNOTATION_SIGNATURE_KEYID = "dev.edgefleet.signature.keyid"
"""On a signature layer: the signing key's ``sha256:`` SubjectPublicKeyInfo fingerprint."""
ANNOTATION_SIGNATURE_ALGORITHM = "dev.edgefleet.signature.algorithm"
ANNOTATION_SIGNATURE_SUBJECT = "dev.edgefleet.signature.subject"
"""On the signature manifest: the digest of the model manifest it signs."""
