"""Interoperability with another OCI client, the ``oras`` Python client: it pulls what
Edgefleet pushed, and Edgefleet pulls (and serves) what it pushed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.agent.oci.pull import Puller
from edgefleet.agent.oci.store import BlobStore
from edgefleet.models.pack import push_model
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.transport import Endpoint
from tests.support.onnxmodels import affine, expected
from tests.support.registry import Registry

oras_client = pytest.importorskip("oras.client", reason="pip install oras (in the dev extra)")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "reg") as reg:
        yield reg


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_oras_pulls_what_edgefleet_pushed(registry: Registry, tmp_path: Path) -> None:
    model = affine(tmp_path / "src" / "detector.onnx", pad_bytes=200_000)
    with RegistryClient(Endpoint.parse(registry.host, plain_http=True)) as client:
        [pushed] = push_model(client, model, "models/detector", "1.0")
    oras = oras_client.OrasClient(hostname=registry.host, insecure=True)
    out = tmp_path / "pulled"
    files = oras.pull(target=f"{registry.host}/models/detector@{pushed.digest}", outdir=str(out))
    assert sorted(Path(f).name for f in files) == ["detector.onnx", "edgefleet-probe.json"]
    assert _sha256(out / "detector.onnx") == _sha256(model)
    manifest = oras.get_manifest(f"{registry.host}/models/detector:1.0")
    assert manifest["layers"][0]["digest"] == "sha256:" + _sha256(model)


def test_edgefleet_pulls_a_plain_onnx_file_pushed_by_oras(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = affine(tmp_path / "plain.onnx", seed=9)
    monkeypatch.chdir(tmp_path)  # oras titles the layer with the path as given
    oras = oras_client.OrasClient(hostname=registry.host, insecure=True)
    oras.push(target=f"{registry.host}/models/plain:1", files=["plain.onnx"])
    with RegistryClient(Endpoint.parse(registry.host, plain_http=True)) as client:
        fetched = client.get_manifest("models/plain", "1")
    assert "vnd.cncf.model" not in fetched.data.decode()  # really not a ModelPack artifact

    puller = Puller(BlobStore(tmp_path / "store"), plain_http=True)
    pulled = puller.pull(f"{registry.host}/models/plain@{fetched.digest}")
    assert _sha256(pulled.path) == _sha256(model)
    assert pulled.probe is None and pulled.signature is None
    session = ort.InferenceSession(str(pulled.path), providers=["CPUExecutionProvider"])
    x = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected(model, x), rtol=1e-5)
    assert json.loads(fetched.data)["layers"][0]["annotations"] == {
        "org.opencontainers.image.title": "plain.onnx"
    }
