"""Signed models: sign and verify (Ed25519, ECDSA P-256), and ``edgefleet models keygen |
sign | verify`` against a real registry, signatures stored under ``sha256-<hex>.sig``."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from edgefleet import profilespec
from edgefleet.agent.k3s.desired import desired_from
from edgefleet.cli.app import app
from edgefleet.controller.gitops.model import Revision
from edgefleet.controller.gitops.render import _desired
from edgefleet.errors import ConfigError
from edgefleet.models import signature_store, signing
from edgefleet.models.signing import SignatureRefused, TrustedKey
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.manifest import Manifest
from edgefleet.oci.transport import Endpoint
from tests.support.apiclient import Api
from tests.support.onnxmodels import affine
from tests.support.registry import Registry

runner = CliRunner()
DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
REPO = "models/detector"


def trusted(key: signing.PrivateKey, name: str = "release") -> TrustedKey:
    return TrustedKey(name, key.public_key())


# -- sign and verify ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", signing.ALGORITHMS)
def test_a_signature_verifies_with_its_key(algorithm: signing.Algorithm) -> None:
    key = signing.generate(algorithm)
    data, sig = signing.sign(key, REPO, DIGEST)
    assert sig.algorithm == algorithm and sig.keyid == signing.fingerprint(key)
    assert signing.verify(data, sig, [trusted(key)], REPO, DIGEST).id == "release"


@pytest.mark.parametrize("algorithm", signing.ALGORITHMS)
def test_a_tampered_payload_is_refused(algorithm: signing.Algorithm) -> None:
    key = signing.generate(algorithm)
    data, sig = signing.sign(key, REPO, DIGEST)
    forged = data.replace(DIGEST.encode(), OTHER.encode())
    with pytest.raises(SignatureRefused, match="does not verify"):
        signing.verify(forged, sig, [trusted(key)], REPO, OTHER)


def test_a_signature_for_another_digest_or_repository_is_refused() -> None:
    key = signing.generate()
    data, sig = signing.sign(key, REPO, OTHER)
    with pytest.raises(SignatureRefused, match=f"signed {OTHER}, not this model's {DIGEST}"):
        signing.verify(data, sig, [trusted(key)], REPO, DIGEST)
    data, sig = signing.sign(key, "models/other", DIGEST)
    with pytest.raises(SignatureRefused, match="for repository 'models/other'"):
        signing.verify(data, sig, [trusted(key)], REPO, DIGEST)


def test_a_key_the_profile_does_not_list_is_refused() -> None:
    signer, listed = signing.generate(), signing.generate("ecdsa-p256")
    data, sig = signing.sign(signer, REPO, DIGEST)
    with pytest.raises(SignatureRefused, match="which the profile does not list"):
        signing.verify(data, sig, [trusted(listed)], REPO, DIGEST)


def test_a_signature_claiming_a_listed_key_but_made_by_another_is_refused() -> None:
    listed, impostor = signing.generate(), signing.generate()
    data, sig = signing.sign(impostor, REPO, DIGEST)
    claimed = signing.Signature(signing.fingerprint(listed), sig.algorithm, sig.value)
    with pytest.raises(SignatureRefused, match="does not verify"):
        signing.verify(data, claimed, [trusted(listed)], REPO, DIGEST)


@pytest.mark.parametrize("value", [b"", b"\x00" * 64, b"garbage" * 20])
@pytest.mark.parametrize("algorithm", signing.ALGORITHMS)
def test_a_garbage_signature_is_refused(value: bytes, algorithm: signing.Algorithm) -> None:
    key = signing.generate(algorithm)
    data, sig = signing.sign(key, REPO, DIGEST)
    bad = signing.Signature(sig.keyid, sig.algorithm, value)
    with pytest.raises(SignatureRefused, match="does not verify"):
        signing.verify(data, bad, [trusted(key)], REPO, DIGEST)
    with pytest.raises(SignatureRefused, match="not base64"):
        signing.decode("not base64!")


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    key = signing.generate("ecdsa-p256")
    signing.write_keypair(key, tmp_path / "k", tmp_path / "k.pub")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    loaded = signing.load_private(tmp_path / "k")
    assert signing.fingerprint(loaded) == signing.fingerprint(key)
    public = signing.load_public((tmp_path / "k.pub").read_text(), "k.pub")
    assert signing.fingerprint(public) == signing.fingerprint(key)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        signing.write_keypair(signing.generate(), tmp_path / "k", tmp_path / "other.pub")
    assert signing.fingerprint(signing.load_private(tmp_path / "k")) == signing.fingerprint(key)


def test_an_unusable_public_key_is_named() -> None:
    with pytest.raises(ConfigError, match="key 'ops' is not a PEM public key"):
        signing.trusted_keys([{"id": "ops", "public_key": "-----BEGIN PUBLIC KEY-----\nxx"}])


# -- the profile -------------------------------------------------------------------------


def _profile(keys: list[dict[str, str]], required: bool = True) -> dict:
    return {"name": "p", "model_signatures": {"required": required, "keys": keys}}


def test_a_profile_with_valid_keys_passes_and_bad_ones_are_named() -> None:
    good = signing.public_pem(signing.generate())
    assert profilespec.errors(_profile([{"id": "release", "public_key": good}])) == []
    problems = dict(
        profilespec.errors(
            _profile(
                [
                    {"id": "release", "public_key": good},
                    {"id": "broken", "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n"},
                    {"id": "release", "public_key": good},
                ]
            )
        )
    )
    assert "not a PEM public key" in problems["/model_signatures/keys/1/public_key"]
    assert "duplicate key id 'release'" in problems["/model_signatures/keys/2/id"]
    assert "/model_signatures/keys" in dict(profilespec.errors(_profile([])))


def test_signature_keys_reach_the_device_and_a_bad_key_is_a_422_naming_it(api: Api) -> None:
    pem = signing.public_pem(signing.generate())
    policy = {"required": True, "keys": [{"id": "release", "public_key": pem}]}
    api.site()
    api.profile("signed", {"mode": "direct", "model_signatures": policy})
    api.profile("plain", {"mode": "direct"})
    signed = api.device(api.token(profile="signed")["token"])
    plain = api.device(api.token(profile="plain")["token"])
    body = api.ok("GET", f"/devices/{signed.id}/desired", signed.access_token)
    assert body["model_signatures"] == policy
    unsigned = api.ok("GET", f"/devices/{plain.id}/desired", plain.access_token)
    assert "model_signatures" not in unsigned, "an absent section changes every ETag"

    bad = {"required": True, "keys": [{"id": "ops-2026", "public_key": pem[:60]}]}
    r = api.call(
        "POST", "/profiles", api.admin, json={"name": "signed", "spec": {"model_signatures": bad}}
    )
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "/model_signatures/keys/0/public_key" in message and "'ops-2026'" in message
    assert api.ok("GET", "/profiles/signed", api.admin)["revision"] == 1


def test_k3s_mode_reads_the_keys_from_the_rendered_configmap() -> None:
    pem = signing.public_pem(signing.generate("ecdsa-p256"))
    policy = {"required": True, "keys": [{"id": "release", "public_key": pem}]}
    rendered = _desired(Revision("vision", 3, {"model_signatures": policy}))
    data = yaml.safe_load(rendered)["data"]
    assert desired_from(data, "dev-1").model_signatures.model_dump() == policy  # type: ignore[union-attr]
    plain = yaml.safe_load(_desired(Revision("vision", 4, {})))["data"]
    assert "model_signatures" not in plain
    assert desired_from(plain, "dev-1").model_signatures is None


# -- against a real registry -------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_operator_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No controller configured: an open registry needs no credentials."""
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "absent.yaml"))
    for name in ("EDGEFLEET_URL", "EDGEFLEET_TOKEN", "EDGEFLEET_REGISTRY_USERNAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "reg") as reg:
        yield reg


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False)


def _push(registry: Registry, model: Path, version: str = "1.0") -> str:
    out = cli(
        "models", "push", str(model), "--name", REPO, "--version", version,
        "--registry", registry.host, "--plain-http", "-o", "json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    return json.loads(out.output)[0]["digest"]


def _keygen(tmp_path: Path, name: str, *extra: str) -> Path:
    out = cli("models", "keygen", str(tmp_path / name), *extra, "-o", "json")
    assert out.exit_code == 0, out.output
    return tmp_path / name


def test_sign_stores_one_layer_per_key_under_the_digest_tag(
    registry: Registry, tmp_path: Path
) -> None:
    digest = _push(registry, affine(tmp_path / "m.onnx"))
    ed = _keygen(tmp_path, "ed")
    ecdsa = _keygen(tmp_path, "ec", "--algorithm", "ecdsa-p256")
    ref = f"{registry.host}/{REPO}:1.0"
    for key, count in ((ed, 1), (ecdsa, 2), (ed, 2)):  # signing again replaces, not appends
        out = cli("models", "sign", ref, "--key", str(key), "--plain-http", "-o", "json")
        assert out.exit_code == 0, out.output
        info = json.loads(out.output)
        assert info["digest"] == digest and info["signatures"] == count
        assert info["signature_tag"] == "sha256-" + digest.split(":")[1] + ".sig"

    with RegistryClient(Endpoint.parse(registry.host, plain_http=True)) as client:
        fetched = client.get_manifest(REPO, signature_store.tag_for(digest))
        manifest = Manifest.from_bytes(fetched.data)
        assert manifest.artifact_type == mt.MODEL_SIGNATURE
        assert manifest.annotations[mt.ANNOTATION_SIGNATURE_SUBJECT] == digest
        algorithms = sorted(
            d.annotations[mt.ANNOTATION_SIGNATURE_ALGORITHM] for d in manifest.layers
        )
        assert algorithms == ["ecdsa-p256", "ed25519"]
        for path in (ed, ecdsa):
            public = signing.load_public(Path(f"{path}.pub").read_text(), "pub")
            keys = [TrustedKey(path.name, public)]
            assert signature_store.verify(client, REPO, digest, keys).id == path.name

    sig_tag = signature_store.tag_for(digest)
    listed = cli("models", "list", "--registry", registry.host, "--plain-http", "-o", "json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == [{"repository": REPO, "tags": ["1.0"]}]
    every = cli(
        "models", "list", "--registry", registry.host, "--plain-http", "--signature-tags",
        "-o", "json",
    )  # fmt: skip
    assert json.loads(every.output) == [{"repository": REPO, "tags": sorted(["1.0", sig_tag])}]

    shown = cli("models", "inspect", ref, "--plain-http", "-o", "json")
    assert shown.exit_code == 0, shown.output
    assert sorted(json.loads(shown.output)["signed_by"]) == sorted(
        f"{signing.fingerprint(signing.load_private(p))} ({a})"
        for p, a in ((ed, "ed25519"), (ecdsa, "ecdsa-p256"))
    )
    for path in (ed, ecdsa):
        out = cli(
            "models", "verify", f"{registry.host}/{REPO}@{digest}",
            "--public-key", f"{path}.pub", "--plain-http",
        )  # fmt: skip
        assert out.exit_code == 0, out.output
        assert f"signed by {path.name}.pub" in out.output


def test_verify_refuses_an_unsigned_model_and_a_stranger_key(
    registry: Registry, tmp_path: Path
) -> None:
    digest = _push(registry, affine(tmp_path / "m.onnx"))
    _push(registry, affine(tmp_path / "m2.onnx", seed=2), "2.0")
    stranger = _keygen(tmp_path, "stranger")
    signer = _keygen(tmp_path, "signer")
    ref = f"{registry.host}/{REPO}:1.0"
    out = cli("models", "verify", ref, "--public-key", f"{signer}.pub", "--plain-http")
    assert out.exit_code == 1
    assert "is not signed" in " ".join(out.output.split())

    assert cli("models", "sign", ref, "--key", str(signer), "--plain-http").exit_code == 0
    out = cli("models", "verify", ref, "--public-key", f"{stranger}.pub", "--plain-http")
    assert out.exit_code == 1 and "does not list" in " ".join(out.output.split())
    # The signature of 1.0 says nothing about 2.0.
    other = f"{registry.host}/{REPO}:2.0"
    out = cli("models", "verify", other, "--public-key", f"{signer}.pub", "--plain-http")
    assert out.exit_code == 1 and "is not signed" in " ".join(out.output.split())
    # A signature copied onto another digest's tag is refused for naming its own digest.
    with RegistryClient(Endpoint.parse(registry.host, plain_http=True)) as client:
        sig = client.get_manifest(REPO, signature_store.tag_for(digest))
        other_digest = client.get_manifest(REPO, "2.0").digest
        client.put_manifest(REPO, signature_store.tag_for(other_digest), sig.data)
    out = cli("models", "verify", other, "--public-key", f"{signer}.pub", "--plain-http")
    assert out.exit_code == 1 and "not this model's" in " ".join(out.output.split())
    assert other_digest in "".join(out.output.split())


def test_sign_with_a_bad_key_file_stores_nothing(registry: Registry, tmp_path: Path) -> None:
    digest = _push(registry, affine(tmp_path / "m.onnx"))
    (tmp_path / "bad.pem").write_text("not a key")
    out = cli(
        "models", "sign", f"{registry.host}/{REPO}:1.0", "--key", str(tmp_path / "bad.pem"),
        "--plain-http",
    )  # fmt: skip
    assert out.exit_code == 1
    assert "not an unencrypted PEM private key" in " ".join(out.output.split())
    with RegistryClient(Endpoint.parse(registry.host, plain_http=True)) as client:
        assert signature_store.read(client, REPO, digest) == []
    out = cli("models", "keygen", str(tmp_path / "k"), "--algorithm", "rsa")
    assert out.exit_code == 1 and "unknown algorithm 'rsa'" in out.output
    assert not (tmp_path / "k").exists()
