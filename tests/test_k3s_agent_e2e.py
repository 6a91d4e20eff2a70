"""A K3s-mode agent against the real controller and a real registry: the revision comes
from the ConfigMap the site's applier wrote (a stand-in cluster answers for the
Kubernetes API), everything else is real: an application calls the model through the
runner's Service port, and what Git does not carry still reaches the device (an operator's
update retry, the next root of a CA rotation)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from cryptography import x509

from edgefleet.agent.daemon import Agent
from edgefleet.signing import cert_pin
from edgefleet.wire import Registration
from tests.agent.conftest import AgentThread, fast_settings
from tests.agent.test_k3s import AGENT_NS, LABELS, FakeKube, _rendered_configmap
from tests.support.onnxmodels import affine, expected
from tests.support.processes import ControllerProcess, wait_for
from tests.support.registry import Registry, free_port
from tests.test_models_e2e import _push, stack  # noqa: F401 (stack is a fixture)

from edgefleet.agent.k3s import names  # isort: skip (after test_k3s skips without kubernetes)
from edgefleet.agent.k3s.backend import K3sBackend  # isort: skip

pytestmark = pytest.mark.k8s_models


def _updates(ctl: ControllerProcess, device_id: str) -> list[dict]:
    with ctl.client() as c:
        return c.get("/updates", params={"device": device_id}).json()


def _trusted_pins(state_dir: Path) -> set[str]:
    path = state_dir / "trust.pem"
    certs = x509.load_pem_x509_certificates(path.read_bytes()) if path.exists() else []
    return {cert_pin(c) for c in certs if c.subject == c.issuer}


def _apply(ctl: ControllerProcess, tmp_path: Path, model: dict, policies: dict) -> dict:
    """A new revision of profile ``vision``; its stored spec (the model pinned by digest)."""
    profile = tmp_path / "vision.yaml"
    doc = {"name": "vision", "mode": "k3s", "models": [model], "policies": policies}
    profile.write_text(yaml.safe_dump(doc))
    applied = ctl.cli("profiles", "apply", str(profile))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    with ctl.client() as c:
        return c.get("/profiles/vision").json()["spec"]


def test_a_k3s_agent_takes_retries_and_the_next_root_from_the_controller(
    stack: tuple[ControllerProcess, Registry],  # noqa: F811
    tmp_path: Path,
) -> None:
    ctl, registry = stack
    v1 = affine(tmp_path / "v1.onnx", seed=1)
    _push(ctl, registry, v1, "1.0")
    model = {"name": "detector", "reference": f"{registry.host}/detector:1.0"}
    policies: dict = {"interval_seconds": 1}
    revisions = [_apply(ctl, tmp_path, model, policies)]
    registration = ctl.registration(tmp_path / "reg.yaml", profile="vision")

    kube = FakeKube()
    sockets = Path(tempfile.mkdtemp(prefix="ef-k3s-"))
    # Git carries no model origin: a plain-HTTP registry is reached as a site mirror.
    mirror = (f"http://{registry.host}",)
    settings = fast_settings(
        tmp_path / "agent", mode="k3s", socket_dir=sockets, registry_mirrors=mirror
    )
    port = free_port()  # the runner's Service port: the gateway listens there
    backend = K3sBackend(
        lambda: kube, lambda: AGENT_NS, LABELS, port, socket_dir=sockets, gateway_host="127.0.0.1"
    )
    reg = Registration.model_validate(yaml.safe_load(registration.read_text()))
    agent = AgentThread(Agent(settings, reg, k3s=backend)).start()
    try:
        wait_for(lambda: agent.state.device_id, 60, "the K3s agent to enrol")
        device_id = agent.state.device_id
        configmap = (names.k8s_name(device_id), names.CONFIGMAP)
        kube.config_maps[configmap] = _rendered_configmap(device_id, 1, revisions[0])
        wait_for(lambda: agent.state.applied_revision == 1, 90, "revision 1 from the ConfigMap")
        # An application in the cluster calls the model through the runner's Service.
        x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/models/detector/predict",
            json={"inputs": {"x": x.tolist()}},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        got = np.array(answer.json()["outputs"]["y"])
        assert np.allclose(got, expected(v1, x), atol=1e-5)

        # Revision 2 asks for a latency no device meets: rolled back, the revision marked
        # bad (one attempt), and only an operator's retry makes the device try it again.
        policies.update(max_attempts=1)
        policies["health_checks"] = [{"type": "latency", "p95_ms": 0.001, "samples": 5}]
        revisions.append(_apply(ctl, tmp_path, model, policies))
        kube.config_maps[configmap] = _rendered_configmap(device_id, 2, revisions[1])
        first = wait_for(
            lambda: [u for u in _updates(ctl, device_id) if u["revision"] == 2],
            90,
            "revision 2's attempt",
        )
        assert [u["outcome"] for u in first] == ["rolled_back"]
        time.sleep(3)  # not tried again on its own
        assert len(_updates(ctl, device_id)) == 2

        retried = ctl.cli("devices", "retry-update", device_id)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        again = wait_for(
            lambda: (found := _updates(ctl, device_id)) and len(found) == 3 and found,
            90,
            "the retried attempt's report (the ConfigMap did not change)",
        )
        assert [u["revision"] for u in again] == [2, 2, 1]
        assert agent.state.update_retries == 1 and agent.state.applied_revision == 1

        ctl.stop()
        rotated = subprocess.run(
            [sys.executable, "-m", "edgefleet.cli", "pki", "rotate", "--data-dir", ctl.data_dir],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        staged = rotated.stdout.split()[3]
        ctl.start()
        wait_for(
            lambda: staged in _trusted_pins(settings.state_dir),
            60,
            "the K3s agent to learn the next root from the device API",
        )
    finally:
        agent.stop(15)
        subprocess.run(["rm", "-rf", str(sockets)], check=False)
