"""Signed models end to end, every part real: a controller over HTTPS, docker-registry
trusting only the controller's tokens, ``edgefleet models keygen | sign`` with the
operator's credentials, a profile that requires signatures, and an agent in direct
mode. An unsigned model is refused, the reason reaches the controller (update reports,
``devices history``) and the signed revision keeps serving; once signed, it installs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import yaml

from edgefleet.agent.runner.client import RunnerClient
from tests.support.onnxmodels import affine, expected
from tests.support.processes import AgentProcess, ControllerProcess, wait_for
from tests.support.registry import Registry
from tests.test_models_e2e import _push, _serving, stack  # noqa: F401 (stack: a fixture)

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


def _predict(sockets: Path) -> np.ndarray:
    client = RunnerClient(sockets / "detector.sock", timeout=10)
    try:
        return np.array(client.predict({"x": X.tolist()})["outputs"]["y"])
    finally:
        client.close()


def _sign(ctl: ControllerProcess, registry: Registry, tag: str, key: Path) -> None:
    ref = f"{registry.host}/detector:{tag}"
    out = ctl.cli("models", "sign", ref, "--key", str(key), "--plain-http")
    assert out.returncode == 0, out.stdout + out.stderr


def test_an_unsigned_model_is_refused_and_a_signed_one_installs(
    stack: tuple[ControllerProcess, Registry],  # noqa: F811
    tmp_path: Path,
    agents: list,
) -> None:
    ctl, registry = stack
    key = tmp_path / "release.key"
    made = ctl.cli("models", "keygen", str(key))
    assert made.returncode == 0, made.stdout + made.stderr
    v1 = affine(tmp_path / "v1.onnx", seed=1)
    v2 = affine(tmp_path / "v2.onnx", seed=2)
    _push(ctl, registry, v1, "1.0")
    _sign(ctl, registry, "1.0", key)

    profile = tmp_path / "vision.yaml"
    doc = {
        "name": "vision",
        "mode": "direct",
        "models": [{"name": "detector", "reference": f"{registry.host}/detector:1.0"}],
        "model_signatures": {
            "required": True,
            "keys": [{"id": "release", "public_key": Path(f"{key}.pub").read_text()}],
        },
    }
    profile.write_text(yaml.safe_dump(doc))
    applied = ctl.cli("profiles", "apply", str(profile))
    assert applied.returncode == 0, applied.stdout + applied.stderr

    sockets = Path(tempfile.mkdtemp(prefix="ef-run-"))
    agent = AgentProcess(
        ctl.registration(tmp_path / "reg.yaml", profile="vision"),
        tmp_path / "agent",
        "SN-1",
        extra=["--socket-dir", str(sockets)],
    )
    agents.append(agent)
    wait_for(lambda: _serving(agent, sockets, 1), 60, "the agent to serve signed v1")
    assert np.allclose(_predict(sockets), expected(v1, X), atol=1e-5)
    device = agent.state()["device_id"]

    # v2 is pushed but nobody signed it: the device refuses it and says why.
    digest2 = _push(ctl, registry, v2, "2.0")
    doc["models"][0]["reference"] = f"{registry.host}/detector:2.0"
    profile.write_text(yaml.safe_dump(doc))
    assert ctl.cli("profiles", "apply", str(profile)).returncode == 0
    with ctl.client() as c:

        def refused() -> list:
            found = c.get("/updates", params={"outcome": "failed", "device": device}).json()
            return [u for u in found if u["revision"] == 2]

        [report] = wait_for(refused, 60, "the device to report the unsigned model refused")
        shown = c.get(f"/devices/{device}").json()
    assert "is not signed" in report["reason"] and digest2 in report["reason"], report
    assert "signatures are required" in report["reason"]
    assert shown["applied_revision"] == 1
    assert {s["name"]: s["revision"] for s in shown["slots"]}[shown["active_slot"]] == 1
    assert np.allclose(_predict(sockets), expected(v1, X), atol=1e-5)  # v1 serves on
    history = ctl.cli("devices", "history", device, "-o", "json")
    assert history.returncode == 0, history.stdout + history.stderr
    reasons = [u["reason"] for u in json.loads(history.stdout)["updates"] if u["revision"] == 2]
    assert reasons and "is not signed" in reasons[0]

    # Signed now: an operator's retry brings it in at once.
    _sign(ctl, registry, "2.0", key)
    retried = ctl.cli("devices", "retry-update", device)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    wait_for(lambda: _serving(agent, sockets, 2), 60, "the agent to serve signed v2")
    assert np.allclose(_predict(sockets), expected(v2, X), atol=1e-5)
