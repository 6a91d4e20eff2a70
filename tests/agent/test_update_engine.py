"""The update engine below the pull: staged model files, real slots, real runners.

A good revision commits; one that does not load, whose probe disagrees, that is too
slow, or whose runner dies during the checks rolls back, while predictions on the main
socket never fail and come from the old model until a commit.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.slots.folder import FolderSlots
from edgefleet.agent.update.attempt import Outcome, Request
from edgefleet.agent.update.engine import UpdateDeferred, UpdateEngine, UpdateRefused
from edgefleet.agent.update.events import Event
from edgefleet.agent.update.modelset import StagedModel
from edgefleet.agent.update.switch import ModelServing
from edgefleet.agent.update.transitions import TRANSITIONS, State, next_state
from edgefleet.models.pack import make_probe, read_signature
from edgefleet.oci import digest as dg
from tests.support.onnxmodels import affine, expected

X = [[0.5, -1.0, 2.0, 0.25]]


def staged(path: Path, version: str, probe_of: Path | None = None) -> StagedModel:
    """The model at ``path`` with the golden probe of ``probe_of`` (default: its own)."""
    source = probe_of or path
    probe = make_probe(source, read_signature(source)).to_bytes()
    return StagedModel("m", path, dg.of_file(path), version, f"test/m:{version}", probe)


class Rig:
    """An engine whose stager hands over the StagedModel a request's revision names."""

    def __init__(self, work: Path, sockets: Path, **engine: Any) -> None:
        self.work = work
        self.sockets = sockets
        self.revisions: dict[int, StagedModel] = {}
        state = work / "state"
        serving = ModelServing(sockets, state / "results", state / "update" / "results")
        self.engine = UpdateEngine(
            state, FolderSlots(state / "slots-data"), serving, self._stage, **engine
        )

    def _stage(self, request: Request) -> list[StagedModel]:
        return [self.revisions[request.revision]]

    def model(self, seed: int) -> Path:
        return affine(self.work / f"m{seed}.onnx", seed=seed)

    def update(self, revision: int, model: StagedModel, **policies: Any) -> Outcome | None:
        self.revisions[revision] = model
        return self.engine.update(Request(revision, [{"name": "m"}], policies))

    def predict(self) -> dict[str, Any]:
        client = RunnerClient(self.sockets / "m.sock", 5.0)
        try:
            return client.predict({"x": X})
        finally:
            client.close()


class Poller:
    """Predicts on the main socket every few milliseconds; keeps every answer or error."""

    def __init__(self, socket: Path) -> None:
        self.client = RunnerClient(socket, 5.0)
        self.versions: list[str] = []
        self.errors: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            try:
                self.versions.append(self.client.predict({"x": X})["model"]["version"])
            except Exception as exc:  # every kind of failure counts against the test
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    sockets = Path(tempfile.mkdtemp(prefix="efu-", dir="/tmp"))  # short: sun_path is 107 bytes
    r = Rig(tmp_path, sockets, retry_base=0.5, retry_cap=1.0)
    yield r
    r.engine.close()
    shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def installed(rig: Rig) -> Rig:
    """Revision 1 (model seed 1) committed in slot A and serving."""
    outcome = rig.update(1, staged(rig.model(1), "1"))
    assert outcome is not None and outcome.outcome == "committed", outcome
    return rig


def test_a_good_update_commits_and_the_new_model_takes_over_the_main_socket(
    installed: Rig,
) -> None:
    new = installed.model(2)
    with Poller(installed.sockets / "m.sock") as poll:
        outcome = installed.update(2, staged(new, "2"))
        time.sleep(0.05)
    assert outcome is not None and outcome.outcome == "committed", outcome
    record = installed.engine.record()
    assert (record.active, record.trying) == ("B", None)
    assert record.slots["B"].state == "good" and record.slots["B"].revision == 2
    assert record.slots["A"].state == "good"  # the fallback for the next update
    answer = installed.predict()
    assert answer["model"]["version"] == "2"
    np.testing.assert_allclose(answer["outputs"]["y"], expected(new, np.array(X)), rtol=1e-5)
    assert poll.versions[0] == "1" and poll.versions[-1] == "2"
    # The takeover restarts the runner on the main socket: callers see one short gap,
    # as long as the engine measured, and nothing else.
    assert outcome.commit_gap_ms is not None and outcome.commit_gap_ms < 3000
    if poll.errors:
        span = poll.errors[-1][0] - poll.errors[0][0]
        assert span <= outcome.commit_gap_ms / 1000 + 0.05, (span, outcome.commit_gap_ms)
        assert all("RunnerUnavailable" in e for _, e in poll.errors), poll.errors


def _rolled_back(rig: Rig, model: StagedModel, failed: str, **policies: Any) -> dict[str, Any]:
    """Update to revision 2 while polling; it must roll back with ``failed`` among the
    failed checks and the old model answering every poll. Returns the evidence bundle."""
    import json

    with Poller(rig.sockets / "m.sock") as poll:
        outcome = rig.update(2, model, **policies)
        time.sleep(0.05)
    assert outcome is not None and outcome.outcome == "rolled_back", outcome
    assert poll.errors == [] and poll.versions and set(poll.versions) == {"1"}
    record = rig.engine.record()
    assert (record.active, record.trying) == ("A", None)
    assert record.slots["B"].state == "bad" and record.slots["B"].bad_revisions == [2]
    assert failed in outcome.reason
    bundle = json.loads(Path(outcome.evidence).read_text())
    assert failed in [c["name"] for c in bundle["failed_checks"]]
    assert any("rolled back" in line for line in bundle["log"])
    assert rig.predict()["model"]["version"] == "1"
    return bundle


def test_a_model_that_does_not_load_rolls_back(installed: Rig) -> None:
    garbage = installed.work / "garbage.onnx"
    garbage.write_bytes(b"this is no ONNX model" * 100)
    model = StagedModel("m", garbage, dg.of_file(garbage), "2")
    bundle = _rolled_back(installed, model, "model_load")
    assert "exited" in bundle["failed_checks"][0]["detail"]


def test_a_model_whose_probe_disagrees_rolls_back_with_expected_and_actual(
    installed: Rig,
) -> None:
    model = staged(installed.model(3), "2", probe_of=installed.model(4))
    bundle = _rolled_back(installed, model, "probe")
    [probe] = [c for c in bundle["failed_checks"] if c["name"] == "probe"]
    shown = probe["evidence"]["m"]["y"]
    assert shown["expected"] != shown["actual"] and shown["max_abs_diff"] > 1e-3
    assert "differs by up to" in probe["detail"]


def test_a_model_over_its_latency_budget_rolls_back_with_its_samples(installed: Rig) -> None:
    checks = [{"type": "probe"}, {"type": "latency", "p95_ms": 0.001, "samples": 20}]
    bundle = _rolled_back(
        installed, staged(installed.model(5), "2"), "latency", health_checks=checks
    )
    [latency] = [c for c in bundle["failed_checks"] if c["name"] == "latency"]
    assert len(latency["evidence"]["m"]["samples_ms"]) == 20
    assert latency["evidence"]["m"]["p95_ms"] > 0.001


def test_a_runner_that_dies_during_the_checks_rolls_back(installed: Rig) -> None:
    kill = {"type": "exec", "command": ["sh", "-c", "kill -9 $EDGEFLEET_CANDIDATE_PIDS"]}
    _rolled_back(
        installed,
        staged(installed.model(6), "2"),
        "runner_stable",
        health_checks=[kill, {"type": "probe"}],
    )


def test_a_revision_rolled_back_in_a_slot_is_not_tried_again_until_an_operator_retries(
    installed: Rig,
) -> None:
    slow = [{"type": "latency", "p95_ms": 0.001, "samples": 5}]
    installed.update(2, staged(installed.model(7), "2"), health_checks=slow)
    with pytest.raises(UpdateRefused, match="not tried again until an operator retries"):
        installed.update(2, staged(installed.model(7), "2"))
    installed.engine.retry(2)
    outcome = installed.update(2, staged(installed.model(7), "2"))
    assert outcome is not None and outcome.outcome == "committed"


def test_a_failed_first_install_is_reported_and_retried_after_a_growing_delay(rig: Rig) -> None:
    bad = staged(rig.model(8), "1", probe_of=rig.model(9))
    outcome = rig.update(1, bad)
    assert outcome is not None and outcome.outcome == "rolled_back"
    record = rig.engine.record()
    assert record.active is None and record.slots["A"].bad_revisions == []  # not barred
    with pytest.raises(UpdateDeferred, match=r"failed 1 time\(s\).*again in"):
        rig.update(1, bad)
    time.sleep(0.6)
    assert rig.update(1, bad).outcome == "rolled_back"  # type: ignore[union-attr]
    good = staged(rig.model(8), "1")
    time.sleep(1.1)
    assert rig.update(1, good).outcome == "committed"  # type: ignore[union-attr]
    assert rig.engine.record().active == "A"


def test_a_revision_already_active_is_not_applied_again(installed: Rig) -> None:
    assert installed.update(1, staged(installed.model(1), "1")) is None


def test_every_state_reaches_idle_through_the_table() -> None:
    """No state can be left without a way out: interrupted, looping and done all lead on."""
    for state in State:
        if state is State.idle:
            continue
        for event in (Event.done, Event.interrupted, Event.looping):
            assert (state, event) in TRANSITIONS, (state, event)
        seen, current = set(), state
        while current is not State.idle:
            assert current not in seen, f"{state} loops on done/failed"
            seen.add(current)
            current = TRANSITIONS.get((current, Event.failed)) or next_state(current, Event.done)
