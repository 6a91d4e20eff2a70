"""Drift references (``edgefleet models push --reference``): computed from an ``.npz`` of
representative inputs with onnxruntime, stored as a layer of the artifact in a real
registry (Debian's docker-registry), shown by ``models inspect``; bad data is refused
with its reason and nothing is pushed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import Result
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.drift import reference as ref
from edgefleet.drift.reference import Reference, compute
from edgefleet.errors import ConfigError
from edgefleet.models.artifact import describe
from edgefleet.models.pack import read_signature
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.auth import PasswordAuth
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.manifest import Manifest
from edgefleet.oci.transport import Endpoint
from tests.support.onnxmodels import OPSET, affine
from tests.support.registry import Registry

runner = CliRunner()


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


def said(out: Result) -> str:
    return " ".join(out.output.split())


def push(registry: Registry, model: Path, *extra: str) -> Result:
    return cli(
        "models", "push", str(model), "--name", "models/affine", "--version", "1.0",
        "--registry", registry.host, "--plain-http", *extra,
    )  # fmt: skip


def rows(path: Path, n: int = 500, features: int = 4, seed: int = 0, **extra: object) -> Path:
    x = np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)
    np.savez(path, x=x, **extra)  # type: ignore[arg-type]
    return path


def labels_model(path: Path, inputs: int = 4) -> Path:
    """``label = argmax(x)``: an int64 label per row, as a classifier that answers labels."""
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0)],
        "labels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def two_inputs_model(path: Path) -> Path:
    """``y = concat(x, float(z))``: a float input and an integer one, five scores a row."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["z"], ["zf"], to=TensorProto.FLOAT),
            helper.make_node("Concat", ["x", "zf"], ["y"], axis=1),
        ],
        "two",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("z", TensorProto.INT64, ["N", 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def two_inputs_data(path: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    z = rng.integers(0, 5, size=(n, 2)).astype(np.int32)  # int32 feeds an int64 input
    np.savez(path, x=x, z=z)
    return path


def stored_reference(registry: Registry, tag: str) -> tuple[Manifest, Reference]:
    client = RegistryClient(Endpoint.parse(registry.host, plain_http=True), PasswordAuth())
    with client:
        fetched = client.get_manifest("models/affine", tag)
        manifest = Manifest.from_bytes(fetched.data, fetched.media_type)
        found = describe(manifest)
        assert found.reference is not None, "no drift reference layer"
        return manifest, Reference.from_bytes(
            client.fetch_blob("models/affine", found.reference.digest)
        )


def test_push_stores_the_reference_beside_the_probe_and_inspect_shows_it(
    registry: Registry, tmp_path: Path
) -> None:
    model = affine(tmp_path / "affine.onnx", inputs=4, outputs=3)
    data = rows(tmp_path / "ref.npz", labels=np.zeros(500))  # other keys are ignored
    out = push(registry, model, "--reference", str(data), "--quantize", "int8", "-o", "json")
    assert out.exit_code == 0, out.output
    pushed = json.loads(out.output)
    assert [p["drift_reference"] is not None for p in pushed] == [True, True]

    for tag in ("1.0", "1.0-int8"):
        manifest, stored = stored_reference(registry, tag)
        types = [layer.media_type for layer in manifest.layers]
        assert types == [mt.MODEL_WEIGHT_RAW, mt.EDGEFLEET_PROBE, mt.EDGEFLEET_DRIFT_REFERENCE]
        assert stored.rows == 500
        assert [(f.input, f.index) for f in stored.features] == [("x", i) for i in range(4)]
        for f in stored.features:  # deciles: ten bins of about 50 rows (edges rounded)
            assert sum(f.histogram.counts) == 500
            assert all(45 <= c <= 55 for c in f.histogram.counts), f.histogram.counts
        [y] = stored.outputs
        assert (y.name, y.kind, y.scores, y.width) == ("y", "classes", "softmax", 3)
        assert sum(y.histogram.counts) == 500 and sum(y.confidence.counts) == 500  # type: ignore[union-attr]

    shown = cli(
        "models", "inspect", f"{registry.host}/models/affine:1.0", "--plain-http", "-o", "json"
    )
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["drift_reference"] == (
        "500 rows; 4 of 4 input features, 10 bins each; outputs: y classes (4 bins, confidence)"
    )
    assert info["probe"].startswith("x[1, 4]; rtol")  # the probe is still there
    table = cli("models", "inspect", f"{registry.host}/models/affine:1.0", "--plain-http")
    assert "500 rows; 4 of 4 input features" in said(table)


def test_without_reference_the_artifact_is_unchanged(registry: Registry, tmp_path: Path) -> None:
    model = affine(tmp_path / "affine.onnx")
    plain = push(registry, model)
    with_ref = push(registry, model, "--reference", str(rows(tmp_path / "ref.npz")))
    again = push(registry, model)
    digest = re.compile(r"@(sha256:[0-9a-f]{64})")
    assert digest.findall(plain.output) == digest.findall(again.output)
    assert digest.findall(plain.output) != digest.findall(with_ref.output)
    shown = cli(
        "models", "inspect", f"{registry.host}/models/affine:1.0", "--plain-http", "-o", "json"
    )
    assert json.loads(shown.output)["drift_reference"] is None


def _not_pushed(registry: Registry) -> bool:
    listed = cli("models", "list", "--registry", registry.host, "--plain-http", "-o", "json")
    return json.loads(listed.output) == []


def _bad(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.npz"
    x = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    if case == "missing":
        np.savez(path, inputs=x)
    elif case == "shape":
        np.savez(path, x=x[:, :3])
    elif case == "rank":
        np.savez(path, x=x[:, :, None])
    elif case == "dtype":
        np.savez(path, x=x.astype(np.complex64))
    elif case == "few":
        np.savez(path, x=x[:20])
    elif case == "nan":
        x[7, 2] = np.nan
        np.savez(path, x=x)
    elif case == "pickle":
        np.savez(path, x=np.array([{"a": 1}] * 500, dtype=object))
    elif case == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif case == "npy":
        with path.open("wb") as f:
            np.save(f, x)
    return path


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", "has no array for model input(s) x; it holds inputs"),
        ("shape", "x has 3 along axis 1; the model expects [N,4]"),
        ("rank", "x has shape [500, 4, 1]; the model expects [N,4]"),
        ("dtype", "x holds complex64 values; the model's input is tensor(float)"),
        ("few", "holds 20 rows; a reference needs at least 100"),
        ("nan", "x holds 1 NaN or infinite value(s)"),
        ("pickle", "is not an .npz of numeric arrays"),
        ("garbage", "is not an .npz of numeric arrays"),
        ("npy", "is a single .npy array, not an .npz: save it with numpy.savez"),
    ],
)
def test_bad_reference_data_is_refused_by_name_and_nothing_is_pushed(
    registry: Registry, tmp_path: Path, case: str, words: str
) -> None:
    out = push(registry, affine(tmp_path / "affine.onnx"), "--reference", str(_bad(tmp_path, case)))
    assert out.exit_code == 1, out.output
    assert words in said(out)
    assert _not_pushed(registry)


def test_a_missing_reference_file_or_unknown_output_kind_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    model = affine(tmp_path / "affine.onnx")
    out = push(registry, model, "--reference", str(tmp_path / "absent.npz"))
    # Rich may wrap the long path after a dot: compared without white space
    flat = "".join(out.output.split())
    assert out.exit_code == 1 and "absent.npzisnotafile:givean.npzofinputs" in flat
    data = rows(tmp_path / "ref.npz")
    out = push(registry, model, "--reference", str(data), "--reference-outputs", "boxes")
    assert out.exit_code == 1 and "--reference-outputs 'boxes': the choices are" in said(out)
    assert _not_pushed(registry)


def test_wide_inputs_keep_the_most_variable_features(tmp_path: Path) -> None:
    model = affine(tmp_path / "wide.onnx", inputs=64, outputs=1)
    x = np.random.default_rng(1).normal(size=(400, 64)) * np.linspace(0.1, 6.4, 64)
    x[:, 3] = 0.0  # constant: no signal, never chosen while others vary
    x[:, 5] = x[:, 5] * 100  # the most variable of all
    np.savez(tmp_path / "wide.npz", x=x)
    stored = compute(model, tmp_path / "wide.npz", read_signature(model))
    chosen = [f.index for f in stored.features]
    assert len(chosen) == ref.MAX_FEATURES and chosen == sorted(chosen)
    assert chosen == [5, *range(33, 64)]
    [y] = stored.outputs  # one value per row: a regressor's value histogram
    assert y.kind == "values" and y.confidence is None and sum(y.histogram.counts) == 400
    assert stored.summary().startswith("400 rows; 32 of 64 input features, 10 bins each")


def test_constant_and_discrete_features_get_bins_around_their_values(tmp_path: Path) -> None:
    model = affine(tmp_path / "affine.onnx")
    x = np.random.default_rng(2).normal(size=(300, 4)).astype(np.float32)
    x[:, 0] = 2.5
    x[:, 1] = np.arange(300) % 2  # a flag
    np.savez(tmp_path / "d.npz", x=x)
    stored = compute(model, tmp_path / "d.npz", read_signature(model))
    constant, flag = stored.features[0].histogram, stored.features[1].histogram
    assert constant.edges[0] == 2.5 and constant.counts == [0, 300, 0]
    assert flag.edges == [0.0, 1.0] and flag.counts == [0, 150, 150]


def test_labels_output_and_the_class_cap(tmp_path: Path) -> None:
    labels = labels_model(tmp_path / "labels.onnx", inputs=4)
    stored = compute(labels, rows(tmp_path / "r.npz"), read_signature(labels))
    [out] = stored.outputs
    assert (out.kind, out.scores, out.confidence) == ("classes", "labels", None)
    assert out.histogram.classes == [0, 1, 2, 3] and sum(out.histogram.counts) == 500

    wide = affine(tmp_path / "wide.onnx", inputs=4, outputs=30)
    stored = compute(wide, rows(tmp_path / "w.npz", n=3000), read_signature(wide))
    [y] = stored.outputs
    assert len(y.histogram.classes) <= ref.MAX_CLASSES and y.width == 30
    assert sum(y.histogram.counts) == 3000  # the rest are counted in the last bin
    forced = compute(wide, tmp_path / "w.npz", read_signature(wide), kind="values")
    assert forced.outputs[0].kind == "values" and sum(forced.outputs[0].histogram.counts) == 90_000


def test_the_document_round_trips_and_garbage_is_refused(tmp_path: Path) -> None:
    model = affine(tmp_path / "affine.onnx", outputs=3)
    stored = compute(model, rows(tmp_path / "r.npz"), read_signature(model))
    assert Reference.from_bytes(stored.to_bytes()) == stored
    doc = json.loads(stored.to_bytes())
    for broken, words in [
        ({**doc, "version": 9}, "version 9; this Edgefleet reads version 1"),
        ({**doc, "format": "x"}, "format is 'x'"),
        ({**doc, "features": [{**doc["features"][0], "counts": [1]}]}, "one more count"),
        ({**doc, "features": [{**doc["features"][0], "index": 99}]}, "x[99] is not in"),
        ({**doc, "features": doc["features"][::-1]}, "in input order then index order"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            Reference.from_bytes(json.dumps(broken).encode())
    with pytest.raises(ConfigError, match="push the model again"):
        Reference.from_bytes(b"{")


def test_several_inputs_share_the_feature_budget(tmp_path: Path) -> None:
    model = two_inputs_model(tmp_path / "two.onnx")
    stored = compute(model, two_inputs_data(tmp_path / "two.npz"), read_signature(model))
    assert [(i.name, i.row_shape) for i in stored.inputs] == [("x", [3]), ("z", [2])]
    assert [(f.input, f.index) for f in stored.features] == [
        ("x", 0), ("x", 1), ("x", 2), ("z", 0), ("z", 1),
    ]  # fmt: skip
    assert stored.features[3].histogram.edges == [0.0, 1.0, 2.0, 3.0, 4.0]  # one bin a value
    np.savez(tmp_path / "floats.npz", x=np.zeros((400, 3)), z=np.zeros((400, 2)))
    with pytest.raises(ConfigError, match="z holds float64 values; the model's input is"):
        compute(model, tmp_path / "floats.npz", read_signature(model))
    np.savez(tmp_path / "ragged.npz", x=np.zeros((400, 3)), z=np.zeros((300, 2), np.int64))
    with pytest.raises(ConfigError, match="different numbers of rows"):
        compute(model, tmp_path / "ragged.npz", read_signature(model))
