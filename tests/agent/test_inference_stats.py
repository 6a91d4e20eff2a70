"""The inference figures of the status report: summed over models, rounded so a steady
device's report keeps its bytes, and carried by a running agent's reports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.inference import collect, quantized, summarize
from edgefleet.agent.runner.api import Health
from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
from edgefleet.agent.slots.folder import FolderSlots
from edgefleet.agent.update.attempt import Request
from edgefleet.agent.update.engine import UpdateEngine
from edgefleet.agent.update.modelset import StagedModel
from edgefleet.agent.update.switch import ModelServing
from edgefleet.errors import BadRequest
from edgefleet.models.pack import make_probe, read_signature
from edgefleet.oci import digest as dg
from edgefleet.wire import InferenceStats, ModelRef, StatusReport
from tests.agent.conftest import agent_command, agent_env, wait_until, write_registration
from tests.agent.fakecontroller import FakeController
from tests.support.onnxmodels import affine

X = [[0.5, -1.0, 2.0, 0.25]]


def health(calls: int, errors: int, p95_ms: float | None) -> Health:
    return Health(
        loaded=True,
        model={"name": "m", "version": "1", "digest": "sha256:" + "0" * 64},
        uptime_s=1.0,
        calls=calls,
        errors=errors,
        p95_ms=p95_ms,
        store_errors=0,
        last_store_error=None,
        port=None,
        pid=1,
    )


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A folder under /tmp: pytest's own paths can pass the 107-byte socket limit."""
    path = Path(tempfile.mkdtemp(prefix="efi-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_quantized_keeps_two_significant_digits_of_count_and_p95_and_three_decimals_of_rate():
    stats = quantized(1234, 12.345, 0.012345)
    assert stats == InferenceStats(count=1200, p95_ms=12.0, error_rate=0.012)
    assert quantized(7, 0.01234, 1 / 7) == InferenceStats(count=7, p95_ms=0.012, error_rate=0.143)
    assert quantized(996, 99.7, 0.9996) == InferenceStats(count=1000, p95_ms=100.0, error_rate=1.0)
    assert quantized(0, None, None) == InferenceStats()


def test_a_steady_device_reports_the_same_bytes_between_intervals():
    """Counters that grew a little and a p95 that jittered: the report does not change."""
    before = summarize([health(1203, 12, 8.31), health(40, 0, 2.0)])
    after = summarize([health(1205, 12, 8.28), health(41, 0, 2.1)])
    assert before.model_dump_json() == after.model_dump_json()


def test_summary_adds_calls_and_errors_and_takes_the_slowest_model():
    stats = summarize([health(100, 2, 5.0), health(300, 6, 8.0), health(0, 0, None)])
    assert stats == InferenceStats(count=400, p95_ms=8.0, error_rate=0.02)


def test_no_models_or_no_calls_report_the_default():
    assert summarize([]) == InferenceStats()
    assert summarize([health(0, 0, None)]) == InferenceStats()


def test_a_runner_that_does_not_answer_is_left_out(sockets: Path) -> None:
    model = affine(sockets / "m.onnx", seed=1)
    serving = RunnerConfig(model=model, socket=sockets / "m.sock", results=sockets / "results")
    silent = Runner(RunnerConfig(model=model, socket=sockets / "x.sock", results=sockets / "r"))
    with Runner(serving) as runner:
        for _ in range(3):
            runner.predict({"x": X})
        stats = collect([silent, runner])
        p95 = runner.health()["p95_ms"]
    assert stats == quantized(3, p95, 0.0)
    assert stats.p95_ms is not None and stats.p95_ms > 0


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


def test_a_serving_agent_reports_its_calls_errors_and_p95(
    tmp_path: Path, fake: FakeController, state_dir: Path, sockets: Path
) -> None:
    model = affine(tmp_path / "m.onnx", seed=1)
    _install(state_dir, sockets, model)
    fake.interval_seconds = 1
    registration = write_registration(tmp_path / "reg.yaml", fake.registration())
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        agent_command(registration, state_dir, "--socket-dir", str(sockets)),
        env=agent_env(),
        stdout=log,
        stderr=log,
    )
    client = RunnerClient(sockets / "m.sock", timeout=10)
    try:
        wait_until(lambda: fake.devices, 15, "the agent to enrol")
        [device] = fake.devices.values()
        ref = f"127.0.0.1:9/m@{dg.of_file(model)}"  # revision 1 is active: nothing is pulled
        fake.set_desired(
            device.device_id,
            revision=1,
            models=[ModelRef(name="m", reference=ref, digest=dg.of_file(model))],
        )
        wait_until(lambda: (sockets / "m.sock").exists(), 15, "the agent to serve its slot")
        for _ in range(5):
            client.predict({"x": X})
        with pytest.raises(BadRequest):
            client.predict({"x": [[1.0, 2.0]]})
        p95 = client.health()["p95_ms"]

        def reported() -> list[StatusReport]:
            with fake.lock:
                return [s for s in device.statuses if s.inference.count == 6]

        # Every report from now on carries the calls (the fake has no route for the install's
        # update report, so the agent retries its cycle and reports sooner than its interval).
        wait_until(lambda: len(reported()) >= 2, 15, "two status reports with the calls")
        want = quantized(6, p95, 1 / 6)
        assert want.error_rate == 0.167 and want.p95_ms is not None and want.p95_ms > 0
        assert {s.inference.model_dump_json() for s in reported()} == {want.model_dump_json()}
        assert device.statuses[-1].health.ok, device.statuses[-1].health
    finally:
        client.close()
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(5)
        log.close()
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
