"""``edgefleet models push | list | inspect`` against a real registry (no auth)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from edgefleet.cli.app import app
from tests.support.onnxmodels import affine
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
    """The output with Rich's line wrapping undone."""
    return " ".join(out.output.split())


def _push(registry: Registry, model: Path, *extra: str) -> Result:
    return cli(
        "models", "push", str(model), "--name", "models/affine", "--version", "1.0",
        "--registry", registry.host, "--plain-http", *extra,
    )  # fmt: skip


def test_push_prints_the_digest_inspect_reads_it_back(registry: Registry, tmp_path: Path) -> None:
    model = affine(tmp_path / "affine.onnx")
    out = _push(registry, model)
    assert out.exit_code == 0, out.output
    [digest] = re.findall(r"@(sha256:[0-9a-f]{64})", out.output)
    assert f"pushed {registry.host}/models/affine:1.0@{digest}" in out.output

    shown = cli(
        "models", "inspect", f"{registry.host}/models/affine:1.0", "--plain-http", "-o", "json"
    )
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["digest"] == digest
    assert info["model_file"] == "affine.onnx" and info["model_size"] == model.stat().st_size
    assert info["signature"] == "x: tensor(float)[N,4] -> y: tensor(float)[N,2]"
    assert info["probe"].startswith("x[1, 4]; rtol")
    assert info["modelpack"] is True

    table = cli("models", "inspect", f"{registry.host}/models/affine@{digest}", "--plain-http")
    assert table.exit_code == 0 and "tensor(float)" in table.output


def test_push_with_int8_lists_both_variants(registry: Registry, tmp_path: Path) -> None:
    out = _push(
        registry, affine(tmp_path / "affine.onnx", inputs=32), "--quantize", "int8", "-o", "json"
    )
    assert out.exit_code == 0, out.output
    pushed = json.loads(out.output)
    assert [(p["tag"], p["variant"]) for p in pushed] == [("1.0", "fp32"), ("1.0-int8", "int8")]
    listed = cli("models", "list", "--registry", registry.host, "--plain-http", "-o", "json")
    assert json.loads(listed.output) == [
        {"repository": "models/affine", "tags": ["1.0", "1.0-int8"]}
    ]
    one = cli(
        "models", "list", "--registry", registry.host, "--plain-http", "--name", "models/affine"
    )
    assert one.exit_code == 0 and "1.0-int8" in one.output


def test_a_bad_reference_ends_with_what_to_write(registry: Registry) -> None:
    out = cli("models", "inspect", "models/affine:1.0")
    assert out.exit_code == 1
    assert "does not start with a registry host" in said(out)


def test_an_unknown_tag_ends_with_the_step_that_failed(registry: Registry) -> None:
    out = cli("models", "inspect", f"{registry.host}/models/none:1.0", "--plain-http")
    assert out.exit_code == 1
    assert f"reading manifest 1.0 of {registry.host}/models/none: not found" in said(out)


def test_a_missing_file_is_refused(registry: Registry, tmp_path: Path) -> None:
    out = _push(registry, tmp_path / "nope.onnx")
    assert out.exit_code == 1 and "is not a file: give the path of an .onnx model" in said(out)


def test_an_unreachable_registry_says_so(tmp_path: Path) -> None:
    model = affine(tmp_path / "m.onnx")
    out = cli(
        "models", "push", str(model), "--name", "models/m", "--version", "1",
        "--registry", "127.0.0.1:9", "--plain-http",
    )  # fmt: skip
    assert out.exit_code == 1
    assert (
        "checking the registry (GET /v2/): cannot reach the registry at http://127.0.0.1:9"
        in said(out)
    )
