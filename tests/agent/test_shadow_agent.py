"""A real agent process given a shadow plan: it pulls the candidate from a real registry,
runs it beside the active model without an A/B update, and its status reports carry the
agreement windows the runner measured; a plan removed stops the shadow, and a candidate
that cannot be had is listed in the health checks while the device stays healthy.
The controller is the fake (its device API only): the controller's side of shadows has
its own tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.slots.folder import FolderSlots
from edgefleet.agent.update.attempt import Request
from edgefleet.agent.update.engine import UpdateEngine
from edgefleet.agent.update.modelset import StagedModel
from edgefleet.agent.update.switch import ModelServing
from edgefleet.models.pack import make_probe, push_model, read_signature
from edgefleet.oci import digest as dg
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.transport import Endpoint
from edgefleet.wire import ModelRef, ShadowModel, ShadowPlan, StatusReport
from tests.agent.conftest import agent_command, agent_env, wait_until, write_registration
from tests.agent.fakecontroller import FakeController
from tests.support.onnxmodels import affine, expected
from tests.support.registry import Registry, require_registry

REPO = "models/m"


@pytest.fixture
def sockets() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    require_registry()
    with Registry(tmp_path / "registry") as r:
        yield r


def _install(state_dir: Path, sockets: Path, model: Path) -> None:
    """Revision 1 committed in slot A, as an update leaves it: the agent serves it at start."""
    staged = StagedModel(
        "m", model, dg.of_file(model), "1", "", make_probe(model, read_signature(model)).to_bytes()
    )
    serving = ModelServing(sockets, state_dir / "results", state_dir / "update" / "results")
    engine = UpdateEngine(
        state_dir, FolderSlots(state_dir / "slots-data"), serving, lambda r: [staged]
    )
    try:
        outcome = engine.update(Request(1, [{"name": "m"}], {}))
    finally:
        engine.close()
    assert outcome is not None and outcome.outcome == "committed", outcome


def test_an_agent_runs_a_shadow_plan_and_reports_its_windows(
    tmp_path: Path, fake: FakeController, registry: Registry, state_dir: Path, sockets: Path
) -> None:
    model = affine(tmp_path / "m.onnx", outputs=3, seed=1)
    _install(state_dir, sockets, model)
    client = RegistryClient(Endpoint.parse(registry.host, plain_http=True))
    [pushed] = push_model(client, affine(tmp_path / "c.onnx", outputs=3, seed=2), REPO, "2")
    client.close()
    candidate = ModelRef(
        name="m",
        reference=f"{registry.host}/{REPO}@{pushed.digest}",
        digest=pushed.digest,
        origin=registry.url,
    )
    missing = candidate.model_copy(
        update={"reference": f"{registry.host}/{REPO}@sha256:{'0' * 64}"}
    )
    fake.interval_seconds = 1
    registration = write_registration(tmp_path / "reg.yaml", fake.registration())
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        agent_command(registration, state_dir, "--socket-dir", str(sockets)),
        env=agent_env(),
        stdout=log,
        stderr=log,
    )
    runner = RunnerClient(sockets / "m.sock", timeout=10)
    try:
        wait_until(lambda: fake.devices, 15, "the agent to enrol")
        [device] = fake.devices.values()
        active = ModelRef(
            name="m", reference=f"127.0.0.1:9/m@{dg.of_file(model)}", digest=dg.of_file(model)
        )
        plan = ShadowPlan(
            models=[ShadowModel(key="rollout-5", active="m", model=candidate)], window_seconds=1
        )
        fake.set_desired(device.device_id, revision=1, models=[active], shadow=plan)

        def shadow_running() -> bool:
            try:
                return bool(runner.health().get("shadow", {}).get("running"))
            except Exception:
                return False  # restarting with its candidate

        wait_until(shadow_running, 30, "the runner to run the candidate")
        rows = np.random.default_rng(4).normal(size=(60, 4)).astype(np.float32)
        for i in range(0, 60, 3):
            answer = runner.predict({"x": rows[i : i + 3].tolist()})
            assert np.allclose(answer["outputs"]["y"], expected(model, rows[i : i + 3]), atol=1e-5)
            # one call at a time through the candidate: none skipped on a busy machine
            wait_until(lambda i=i: runner.health()["shadow"]["compared"] == i + 3, 10)

        def windows() -> list:
            with fake.lock:
                return [w for s in device.statuses for w in s.shadow]

        wait_until(lambda: sum(w.compared for w in windows()) == 60, 40, "60 rows reported")
        reported = windows()
        assert {(w.key, w.model, w.candidate_digest) for w in reported} == {
            ("rollout-5", "m", candidate.digest)
        }
        agree = expected(model, rows).argmax(1) == expected(tmp_path / "c.onnx", rows).argmax(1)
        assert sum(w.top1_agree for w in reported) == int(agree.sum())
        assert len({(w.start, w.compared) for w in reported}) == len(reported)  # each once
        with fake.lock:
            last: StatusReport = device.statuses[-1]
        assert last.applied_revision == 1 and last.active_slot == "A"  # no A/B update
        assert [s.revision for s in last.slots if s.name == "A"] == [1]

        # a candidate that cannot be had: listed, the device healthy, the model serving
        bad = ShadowPlan(models=[ShadowModel(key="rollout-6", active="m", model=missing)])
        fake.set_desired(device.device_id, shadow=bad)

        def listed() -> list:
            with fake.lock:
                return [c for c in device.statuses[-1].health.checks if c.name == "shadow m"]

        wait_until(listed, 30, "the refused candidate in the health checks")
        with fake.lock:
            assert device.statuses[-1].health.ok
        assert "rollout-6" in listed()[0].detail
        wait_until(lambda: "shadow" not in runner.health(), 15, "the old candidate stopped")
        answer = runner.predict({"x": rows[:1].tolist()})
        assert np.allclose(answer["outputs"]["y"], expected(model, rows[:1]), atol=1e-5)
        assert not any((state_dir / "shadow" / "blobs" / "sha256").iterdir())
    finally:
        runner.close()
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(5)
        log.close()
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
