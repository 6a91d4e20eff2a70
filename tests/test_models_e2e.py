"""Models end to end, every part real: a controller over HTTPS, docker-registry in token
mode trusting only the controller, ``edgefleet models push`` with the operator's own
credentials, a profile naming the model by tag, and agents in direct mode that pull it
with their own short-lived tokens and serve predictions from it; a new version rolls in
the same way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgefleet.agent.buffer import Buffer
from edgefleet.agent.results import RESULTS_DB
from edgefleet.agent.runner.client import RunnerClient
from tests.support.onnxmodels import affine, expected
from tests.support.processes import EDGEFLEET, AgentProcess, ControllerProcess, wait_for
from tests.support.registry import Registry, TokenAuth, free_port, require_registry


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ControllerProcess, Registry]]:
    require_registry()
    port = free_port()
    ctl = ControllerProcess(tmp_path / "controller", registry_insecure=f'["127.0.0.1:{port}"]')
    ctl.settings["public_url"] = ctl.url
    registry = None
    try:
        ctl.start()
        bundle = tmp_path / "bundle.pem"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env["EDGEFLEET_PUBLIC_URL"] = ctl.url
        out = subprocess.run(
            [
                *EDGEFLEET,
                "controller",
                "registry-config",
                "--data-dir",
                str(ctl.data_dir),
                "--bundle",
                str(bundle),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = yaml.safe_load(out.stdout)["auth"]["token"]
        auth = TokenAuth(token["realm"], token["service"], token["issuer"], bundle)
        registry = Registry(tmp_path / "registry", auth=auth, port=port).start()
        yield ctl, registry
    finally:
        if registry is not None:
            registry.stop()
        ctl.close()


def _push(ctl: ControllerProcess, registry: Registry, model: Path, version: str) -> str:
    out = ctl.cli(
        "models",
        "push",
        str(model),
        "--name",
        "detector",
        "--version",
        version,
        "--registry",
        registry.host,
        "--plain-http",
        "-o",
        "json",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)[0]["digest"]


def _serving(agent: AgentProcess, sockets: Path, revision: int) -> bool:
    return (
        agent.state().get("applied_revision") == revision and (sockets / "detector.sock").exists()
    )


def test_push_apply_and_agents_serve_the_model(
    stack: tuple[ControllerProcess, Registry], tmp_path: Path, agents: list
) -> None:
    ctl, registry = stack
    v1 = affine(tmp_path / "v1.onnx", seed=1)
    v2 = affine(tmp_path / "v2.onnx", seed=2)
    digest = _push(ctl, registry, v1, "1.0")

    profile = tmp_path / "vision.yaml"
    reference = f"{registry.host}/detector:1.0"
    profile.write_text(
        yaml.safe_dump(
            {
                "name": "vision",
                "mode": "direct",
                "models": [{"name": "detector", "reference": reference}],
            }
        )
    )
    applied = ctl.cli("profiles", "apply", str(profile), "-o", "json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    with ctl.client() as c:
        stored = c.get("/profiles/vision").json()["spec"]["models"][0]["reference"]
    assert stored == f"{reference}@{digest}"

    registration = ctl.registration(tmp_path / "reg.yaml", profile="vision")
    socket_dirs = []
    for i in range(2):
        sockets = Path(tempfile.mkdtemp(prefix="ef-run-"))
        socket_dirs.append(sockets)
        agents.append(
            AgentProcess(
                registration,
                tmp_path / f"agent-{i}",
                f"SN-{i}",
                extra=["--socket-dir", str(sockets)],
            )
        )
    try:
        x = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)
        for agent, sockets in zip(agents, socket_dirs, strict=True):
            wait_for(lambda a=agent, s=sockets: _serving(a, s, 1), 60, "the agent to serve v1")
            client = RunnerClient(sockets / "detector.sock", timeout=10)
            answer = client.predict({"x": x.tolist()})
            client.close()
            assert np.allclose(np.array(answer["outputs"]["y"]), expected(v1, x), atol=1e-5)
        with ctl.client() as c:

            def reported() -> bool:
                return {d["applied_revision"] for d in c.get("/devices").json()} == {1}

            wait_for(reported, 30, "both agents to report revision 1")

        # A new version: push, apply the new tag, and every agent serves it.
        digest2 = _push(ctl, registry, v2, "2.0")
        profile.write_text(profile.read_text().replace(":1.0", ":2.0"))
        assert ctl.cli("profiles", "apply", str(profile)).returncode == 0
        for agent, sockets in zip(agents, socket_dirs, strict=True):
            wait_for(lambda a=agent, s=sockets: _serving(a, s, 2), 60, "the agent to serve v2")
            client = RunnerClient(sockets / "detector.sock", timeout=10)
            answer = client.predict({"x": x.tolist()})
            health = client.health()
            client.close()
            assert np.allclose(np.array(answer["outputs"]["y"]), expected(v2, x), atol=1e-5)
            assert digest2 != digest
        assert health["calls"] >= 1
        # Every prediction reaches the controller, naming the slot and revision it came from.
        device = agents[0].state()["device_id"]

        def uploaded() -> list[dict]:
            with ctl.client() as c:
                found = c.get("/results", params={"device": device, "order": "arrival"})
            return found.json()["results"] if len(found.json()["results"]) >= 2 else []

        results = wait_for(uploaded, 30, "the predictions at the controller")
        assert [r["revision"] for r in results[-2:]] == [1, 2]
        assert results[-1]["slot"] in ("A", "B") and results[-1]["payload"]["outputs"]
        assert results[-1]["digest"].startswith("sha256:")
        with Buffer(tmp_path / "agent-0" / "results" / RESULTS_DB) as buffer:
            wait_for(lambda: buffer.stats().depth == 0, 30, "the device to drop what was acked")

        # A version too slow for the profile's budget: tried beside v2, rolled back with
        # its evidence, and v2 serves throughout.
        v3 = affine(tmp_path / "v3.onnx", seed=3)
        _push(ctl, registry, v3, "3.0")
        doc = yaml.safe_load(profile.read_text())
        doc["models"][0]["reference"] = f"{registry.host}/detector:3.0"
        doc["policies"] = {"health_checks": [{"type": "latency", "p95_ms": 0.001, "samples": 5}]}
        profile.write_text(yaml.safe_dump(doc))
        assert ctl.cli("profiles", "apply", str(profile)).returncode == 0
        with ctl.client() as c:

            def rolled_back() -> list:
                found = c.get("/updates", params={"outcome": "rolled_back"}).json()
                return found if len(found) == len(agents) else []

            reports = wait_for(rolled_back, 60, "both agents to report the rollback")
            detail = c.get(f"/updates/{reports[0]['id']}").json()
            device = c.get(f"/devices/{reports[0]['device']}").json()
        assert detail["revision"] == 3 and detail["outcome"] == "rolled_back"
        assert detail["evidence"]["failed_checks"][0]["name"] == "latency"
        assert detail["evidence"]["latency"][0]["samples_ms"]
        assert device["applied_revision"] == 2 and device["last_update"]["outcome"] == "rolled_back"
        states = {s["name"]: s for s in device["slots"]}
        assert states[device["active_slot"]]["revision"] == 2
        for sockets in socket_dirs:
            client = RunnerClient(sockets / "detector.sock", timeout=10)
            answer = client.predict({"x": x.tolist()})
            client.close()
            assert np.allclose(np.array(answer["outputs"]["y"]), expected(v2, x), atol=1e-5)
        shown = ctl.cli("updates", "show", str(reports[0]["id"]))
        assert shown.returncode == 0 and "latency" in shown.stdout

        # Not tried again on its own; an operator's retry makes the device try it once more.
        time.sleep(3)
        with ctl.client() as c:
            assert len(c.get("/updates", params={"device": reports[0]["device"]}).json()) == 3
        retried = ctl.cli("devices", "retry-update", reports[0]["device"])
        assert retried.returncode == 0, retried.stdout + retried.stderr
        with ctl.client() as c:
            wait_for(
                lambda: len(c.get("/updates", params={"device": reports[0]["device"]}).json()) == 4,
                60,
                "the retried attempt's report",
            )
    finally:
        for sockets in socket_dirs:
            shutil.rmtree(sockets, ignore_errors=True)
