"""Packing an ONNX model: ModelPack layout, signature read from the model, golden probe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgefleet.errors import ConfigError
from edgefleet.models.artifact import describe
from edgefleet.models.pack import pack, push_model, read_signature
from edgefleet.models.probe import Probe
from edgefleet.models.signature import Signature, TensorSpec
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import BadReference
from edgefleet.oci.manifest import Manifest
from edgefleet.oci.transport import Endpoint
from tests.support.onnxmodels import affine, expected
from tests.support.registry import Registry


@pytest.fixture
def client(tmp_path: Path) -> Iterator[RegistryClient]:
    with (
        Registry(tmp_path / "reg") as reg,
        RegistryClient(Endpoint.parse(reg.host, plain_http=True)) as c,
    ):
        yield c


def _run(path: Path, probe: Probe) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, probe.arrays()), strict=True))


def test_signature_names_types_and_symbolic_dimensions(tmp_path: Path) -> None:
    model = affine(tmp_path / "m.onnx", inputs=3, outputs=5)
    assert read_signature(model) == Signature(
        [TensorSpec("x", "tensor(float)", ["N", 3])], [TensorSpec("y", "tensor(float)", ["N", 5])]
    )


def test_the_probe_is_what_the_model_computes(tmp_path: Path) -> None:
    model = affine(tmp_path / "m.onnx", seed=3)
    packed = pack(model, "models/affine", "1.0")
    x = packed.probe.arrays()["x"]
    assert x.shape == (1, 4)  # the free dimension N is set to 1
    want = expected(model, x)
    got = packed.probe.outputs[0].array()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert packed.probe.compare(_run(model, packed.probe)) == []


def test_the_probe_catches_another_model_behind_the_same_signature(tmp_path: Path) -> None:
    packed = pack(affine(tmp_path / "a.onnx", seed=1), "models/affine", "1.0")
    impostor = affine(tmp_path / "b.onnx", seed=2)
    problems = packed.probe.compare(_run(impostor, packed.probe))
    assert len(problems) == 1 and problems[0].startswith("y: differs by up to")


def test_the_probe_survives_its_json_exactly(tmp_path: Path) -> None:
    packed = pack(affine(tmp_path / "m.onnx"), "models/affine", "1.0")
    again = Probe.from_bytes(packed.probe.to_bytes())
    assert again == packed.probe


def test_the_artifact_follows_modelpack(client: RegistryClient, tmp_path: Path) -> None:
    model = affine(tmp_path / "detector.onnx")
    [pushed] = push_model(client, model, "models/detector", "2.1")
    fetched = client.get_manifest("models/detector", "2.1")
    assert fetched.digest == pushed.digest
    doc = json.loads(fetched.data)
    assert doc["mediaType"] == mt.OCI_MANIFEST
    assert doc["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert doc["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    weight, probe = doc["layers"]
    assert weight["mediaType"] == "application/vnd.cncf.model.weight.v1.raw"
    assert weight["annotations"][mt.ANNOTATION_TITLE] == "detector.onnx"
    assert weight["size"] == model.stat().st_size
    assert probe["mediaType"] == mt.EDGEFLEET_PROBE
    config = json.loads(client.fetch_blob("models/detector", doc["config"]["digest"]))
    assert config["descriptor"] == {"name": "models/detector", "version": "2.1"}
    assert config["config"]["format"] == "onnx"
    assert config["modelfs"] == {"type": "layers", "diff_ids": [weight["digest"], probe["digest"]]}
    found = describe(Manifest.from_bytes(fetched.data))
    assert found.modelpack and found.variant == "fp32" and found.version == "2.1"
    assert found.signature == read_signature(model)


def test_pushing_the_same_model_again_changes_nothing(
    client: RegistryClient, tmp_path: Path
) -> None:
    model = affine(tmp_path / "m.onnx")
    [first] = push_model(client, model, "models/affine", "1.0")
    [second] = push_model(client, model, "models/affine", "1.0")
    assert first.digest == second.digest


def test_int8_variant_has_its_own_tag_probe_and_looser_tolerance(
    client: RegistryClient, tmp_path: Path
) -> None:
    model = affine(tmp_path / "m.onnx", inputs=64, outputs=8, seed=5)
    fp32, int8 = push_model(client, model, "models/affine", "1.0", quantize="int8")
    assert (fp32.tag, int8.tag) == ("1.0", "1.0-int8")
    assert fp32.digest != int8.digest
    assert int8.probe.rtol > fp32.probe.rtol and int8.probe.atol > fp32.probe.atol
    manifest = Manifest.from_bytes(client.get_manifest("models/affine", "1.0-int8").data)
    found = describe(manifest)
    assert found.variant == "int8" and found.model.title == "m.int8.onnx"
    quantized = tmp_path / "q.onnx"
    with client.get_blob("models/affine", found.model.digest) as r:
        quantized.write_bytes(r.read())
    ops = {n.op_type for n in onnx.load(str(quantized)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    assert int8.probe.compare(_run(quantized, int8.probe)) == []
    # The quantized model stays close to the original, within the int8 tolerance.
    assert int8.probe.compare(_run(model, int8.probe)) == []


def test_a_file_that_is_not_onnx_is_refused_before_anything_is_pushed(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a protobuf at all")
    with pytest.raises(ConfigError, match="is not a valid ONNX model"):
        pack(bogus, "models/x", "1.0")


def test_bad_names_and_versions_are_refused(tmp_path: Path) -> None:
    model = affine(tmp_path / "m.onnx")
    with pytest.raises(BadReference, match="not a repository name"):
        pack(model, "Models/X", "1.0")
    with pytest.raises(BadReference, match="not a tag"):
        pack(model, "models/x", "1.0/beta")


def test_unknown_quantization_is_refused(client: RegistryClient, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the choices are int8"):
        push_model(client, affine(tmp_path / "m.onnx"), "models/x", "1.0", quantize="int4")


def test_a_string_input_cannot_get_a_probe(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [1])],
    )
    path = tmp_path / "s.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ConfigError, match=r"input s .* has element type tensor\(string\)"):
        pack(path, "models/s", "1.0")
