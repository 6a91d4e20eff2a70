"""Model signatures in the registry, under a tag derived from the model's digest.

The registries a fleet runs (distribution 2.8 among them) have no referrers API, so,
as cosign does, the signatures of ``repo@sha256:<hex>`` live in the same repository
under the tag ``sha256-<hex>.sig``: an OCI manifest with the empty config and one layer
per signature. Each layer's blob is the signed payload; its annotations carry the
signature, the key's fingerprint and the algorithm. Another key's signature is added
by re-pushing the tag with one more layer; signing again with the same key replaces
its layer. Two people signing the same digest in the same second can lose one layer
(the registry has no compare-and-swap on tags): ``models verify`` shows what is there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

from edgefleet.models import signing
from edgefleet.models.signing import SignatureRefused, TrustedKey
from edgefleet.oci import digest as dg
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import ArtifactNotFound, OciError
from edgefleet.oci.manifest import Descriptor, Manifest
from edgefleet.oci.push import Blob, push
from edgefleet.oci.reference import check_digest

_SIGNATURE_TAG = re.compile(r"sha256-[0-9a-f]{64}\.sig")

EMPTY_CONFIG = b"{}"
MAX_SIGNATURES = 32
"""A tag with more layers than this is not read: no fleet trusts that many keys."""


@dataclass(frozen=True)
class StoredSignature:
    """One layer of the signature manifest, read back."""

    layer: Descriptor
    payload: bytes
    signature: signing.Signature | None
    """None when the layer's annotations do not make a signature (``problem`` says why)."""
    problem: str = ""


def tag_for(digest: str) -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>.sig``."""
    return check_digest(digest).replace(":", "-", 1) + ".sig"


def is_signature_tag(tag: str) -> bool:
    """Whether a tag is one :func:`tag_for` makes (listings hide them: they are not models)."""
    return _SIGNATURE_TAG.fullmatch(tag) is not None


def read(client: RegistryClient, repository: str, digest: str) -> list[StoredSignature]:
    """Every signature stored for ``repository@digest``; [] when there is none."""
    tag = tag_for(digest)
    try:
        fetched = client.get_manifest(repository, tag)
    except ArtifactNotFound:
        return []
    manifest = Manifest.from_bytes(fetched.data, fetched.media_type)
    layers = [d for d in manifest.layers if d.media_type == mt.MODEL_SIGNATURE_PAYLOAD]
    if len(layers) > MAX_SIGNATURES:
        raise OciError(
            f"reading {repository}:{tag}: {len(layers)} signatures, more than the "
            f"{MAX_SIGNATURES} a device reads"
        )
    payloads: dict[str, bytes] = {}
    out = []
    for layer in layers:
        if layer.size > signing.MAX_PAYLOAD:
            out.append(StoredSignature(layer, b"", None, f"a {layer.size}-byte payload"))
            continue
        if layer.digest not in payloads:
            payloads[layer.digest] = client.fetch_blob(repository, layer.digest)
        out.append(_entry(layer, payloads[layer.digest]))
    return out


def add(client: RegistryClient, repository: str, digest: str, key: signing.PrivateKey) -> int:
    """Sign ``repository@digest`` with ``key`` and store it beside the others; returns how
    many signatures the tag holds now."""
    data, sig = signing.sign(key, repository, digest)
    kept = [
        s
        for s in read(client, repository, digest)
        if s.signature is None or s.signature.keyid != sig.keyid
    ]
    layers = [Blob(s.layer, s.payload) for s in kept]
    layers.append(
        Blob.of_bytes(
            mt.MODEL_SIGNATURE_PAYLOAD,
            data,
            {
                mt.ANNOTATION_SIGNATURE_VALUE: signing.encode(sig.value),
                mt.ANNOTATION_SIGNATURE_KEYID: sig.keyid,
                mt.ANNOTATION_SIGNATURE_ALGORITHM: sig.algorithm,
            },
        )
    )
    config = Blob(Descriptor(mt.OCI_EMPTY, dg.of_bytes(EMPTY_CONFIG), 2), EMPTY_CONFIG)
    push(
        client,
        repository,
        tag_for(digest),
        config,
        layers,
        artifact_type=mt.MODEL_SIGNATURE,
        annotations={mt.ANNOTATION_SIGNATURE_SUBJECT: digest},
    )
    return len(layers)


def verify(
    client: RegistryClient, repository: str, digest: str, keys: list[TrustedKey]
) -> TrustedKey:
    """The first trusted key with a valid signature on ``repository@digest``.

    SignatureRefused when there is no signature, or none verifies (the message gives
    each one's reason); OciError when the registry cannot be read."""
    stored = read(client, repository, digest)
    if not stored:
        raise SignatureRefused(
            f"{repository}@{digest} is not signed (no tag {tag_for(digest)}); sign it with "
            "`edgefleet models sign` and a key the profile lists"
        )
    reasons = []
    for s in stored:
        if s.signature is None:
            reasons.append(s.problem)
            continue
        try:
            return signing.verify(s.payload, s.signature, keys, repository, digest)
        except SignatureRefused as exc:
            reasons.append(exc.message)
    raise SignatureRefused(
        f"no signature on {repository}@{digest} verifies with a key the profile lists "
        f"({', '.join(k.id for k in keys)}): " + "; ".join(reasons)
    )


def _entry(layer: Descriptor, payload: bytes) -> StoredSignature:
    notes = layer.annotations
    value = notes.get(mt.ANNOTATION_SIGNATURE_VALUE, "")
    keyid = notes.get(mt.ANNOTATION_SIGNATURE_KEYID, "")
    algorithm = notes.get(mt.ANNOTATION_SIGNATURE_ALGORITHM, "")
    if not value or not keyid:
        return StoredSignature(layer, payload, None, "a signature layer without its value or key")
    if algorithm not in signing.ALGORITHMS:
        return StoredSignature(layer, payload, None, f"unknown algorithm {algorithm!r}")
    try:
        raw = signing.decode(value)
    except SignatureRefused as exc:
        return StoredSignature(layer, payload, None, f"key {keyid}: {exc.message}")
    sig = signing.Signature(keyid, cast(signing.Algorithm, algorithm), raw)
    return StoredSignature(layer, payload, sig)
