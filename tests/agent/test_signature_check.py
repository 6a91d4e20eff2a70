"""The device's signature check against a real registry: a model signed by a listed key
passes, an unsigned, stranger-signed, garbage-signed or signed-for-another-digest model
is refused with the reason, before any of its blobs reaches the device's store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.agent.oci.pull import Puller
from edgefleet.agent.oci.store import BlobStore
from edgefleet.agent.update.signature_check import check, required_keys
from edgefleet.models import signature_store, signing
from edgefleet.models.pack import push_model
from edgefleet.models.signing import SignatureRefused
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.manifest import Manifest
from edgefleet.oci.transport import Endpoint
from edgefleet.wire import ModelRef
from tests.support.onnxmodels import affine
from tests.support.registry import Registry

REPO = "models/affine"


@dataclass
class Setup:
    registry: Registry
    client: RegistryClient
    puller: Puller
    store: Path
    key: signing.PrivateKey
    policy: dict

    def push(self, tmp_path: Path, version: str, seed: int) -> ModelRef:
        model = affine(tmp_path / f"{version}.onnx", seed=seed)
        [pushed] = push_model(self.client, model, REPO, version)
        reference = f"{self.registry.host}/{REPO}@{pushed.digest}"
        return ModelRef(name="affine", reference=reference, digest=pushed.digest)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with Registry(tmp_path / "reg") as registry:
        client = RegistryClient(Endpoint.parse(registry.host, plain_http=True))
        puller = Puller(BlobStore(tmp_path / "store"), plain_http=True)
        key = signing.generate()
        policy = {
            "required": True,
            "keys": [
                {"id": "other", "public_key": signing.public_pem(signing.generate("ecdsa-p256"))},
                {"id": "release", "public_key": signing.public_pem(key)},
            ],
        }
        try:
            yield Setup(registry, client, puller, tmp_path / "store", key, policy)
        finally:
            puller.close()
            client.close()


def _keys(setup: Setup) -> list[signing.TrustedKey]:
    keys = required_keys(setup.policy)
    assert keys is not None
    return keys


def test_a_model_signed_by_a_listed_key_passes(setup: Setup, tmp_path: Path) -> None:
    model = setup.push(tmp_path, "1.0", 1)
    signature_store.add(setup.client, REPO, model.digest, setup.key)
    assert check(setup.puller, model, _keys(setup)).id == "release"


def test_an_unsigned_model_is_refused_before_its_blobs_are_fetched(
    setup: Setup, tmp_path: Path
) -> None:
    model = setup.push(tmp_path, "1.0", 1)
    with pytest.raises(SignatureRefused, match="is not signed") as refused:
        check(setup.puller, model, _keys(setup))
    assert "model affine" in refused.value.message and "signatures are required" in str(
        refused.value
    )
    assert not any(p.is_file() for p in setup.store.rglob("*"))


def test_a_model_signed_by_a_stranger_is_refused(setup: Setup, tmp_path: Path) -> None:
    model = setup.push(tmp_path, "1.0", 1)
    signature_store.add(setup.client, REPO, model.digest, signing.generate())
    with pytest.raises(SignatureRefused, match="which the profile does not list"):
        check(setup.puller, model, _keys(setup))


def test_a_signature_for_another_digest_is_refused(setup: Setup, tmp_path: Path) -> None:
    """A valid signature of v1, copied under v2's signature tag, does not vouch for v2."""
    v1 = setup.push(tmp_path, "1.0", 1)
    v2 = setup.push(tmp_path, "2.0", 2)
    signature_store.add(setup.client, REPO, v1.digest, setup.key)
    copied = setup.client.get_manifest(REPO, signature_store.tag_for(v1.digest))
    setup.client.put_manifest(REPO, signature_store.tag_for(v2.digest), copied.data)
    with pytest.raises(SignatureRefused, match=f"signed {v1.digest}, not this model's"):
        check(setup.puller, v2, _keys(setup))


def test_a_garbage_signature_is_refused(setup: Setup, tmp_path: Path) -> None:
    model = setup.push(tmp_path, "1.0", 1)
    signature_store.add(setup.client, REPO, model.digest, setup.key)
    tag = signature_store.tag_for(model.digest)
    manifest = Manifest.from_bytes(setup.client.get_manifest(REPO, tag).data)
    [layer] = manifest.layers
    notes = {**layer.annotations, mt.ANNOTATION_SIGNATURE_VALUE: signing.encode(b"\x01" * 64)}
    forged = Manifest(
        manifest.config,
        [type(layer)(layer.media_type, layer.digest, layer.size, notes)],
        manifest.artifact_type,
        manifest.annotations,
    )
    setup.client.put_manifest(REPO, tag, forged.to_bytes())
    with pytest.raises(SignatureRefused, match="does not verify"):
        check(setup.puller, model, _keys(setup))


def test_a_mirror_without_the_signature_defers_to_the_registry(
    setup: Setup, tmp_path: Path
) -> None:
    """A site mirror that has not synced the signature tag yet does not refuse a model the
    registry holds a good signature for; a refusal lists what each source said."""
    model = setup.push(tmp_path, "1.0", 1)
    with Registry(tmp_path / "mirror") as mirror:
        puller = Puller(BlobStore(tmp_path / "store2"), mirrors=[mirror.url], plain_http=True)
        try:
            with pytest.raises(SignatureRefused) as refused:
                check(puller, model, _keys(setup))
            assert refused.value.message.count("is not signed") == 2
            assert mirror.url in refused.value.message
            signature_store.add(setup.client, REPO, model.digest, setup.key)
            assert check(puller, model, _keys(setup)).id == "release"
        finally:
            puller.close()


def test_a_policy_that_does_not_require_signatures_checks_nothing() -> None:
    assert required_keys(None) is None
    assert required_keys({"required": False, "keys": []}) is None
    with pytest.raises(SignatureRefused, match="lists no key"):
        required_keys({"required": True, "keys": []})
