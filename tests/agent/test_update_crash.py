"""SIGKILL at every step of the update, and at random instants: after the restart a
good slot serves and the update completes or rolls back; a crash loop ends.

The agent is this file run as a script (``child``): an engine on real folder slots
with real runners, optionally made to SIGKILL itself on entering a state. It prints
what served at boot and at the end, the record and the outcome, as one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD_PATH = [
    "staging",
    "writing",
    "verifying",
    "arming",
    "trying",
    "checking",
    "committing",
    "reporting",
]
ROLLBACK_PATH = [
    "staging",
    "writing",
    "verifying",
    "arming",
    "trying",
    "checking",
    "rolling_back",
    "reporting",
]
X = [[0.5, -1.0, 2.0, 0.25]]


def child(args: dict[str, Any]) -> None:
    """One life of the agent: recover, apply the revision, report what serves."""
    sys.path.insert(0, str(ROOT))
    from edgefleet.agent.runner.client import RunnerClient
    from edgefleet.agent.slots.folder import FolderSlots
    from edgefleet.agent.update import states
    from edgefleet.agent.update.attempt import Request
    from edgefleet.agent.update.engine import UpdateEngine
    from edgefleet.agent.update.modelset import StagedModel
    from edgefleet.agent.update.switch import ModelServing
    from edgefleet.agent.update.transitions import State
    from edgefleet.errors import EdgefleetError
    from edgefleet.oci import digest as dg

    work, sockets = Path(args["work"]), Path(args["sockets"])
    model = Path(args["model"])
    staged = StagedModel(
        "m", model, dg.of_file(model), str(args["revision"]), "", Path(args["probe"]).read_bytes()
    )
    if args.get("kill_at"):
        state = State(args["kill_at"])

        class Killer:
            def run(self, ctx: object) -> object:
                os.kill(os.getpid(), signal.SIGKILL)
                raise AssertionError("unreachable")

        states.STATES[state] = Killer()  # type: ignore[assignment]

    state_dir = work / "state"
    serving = ModelServing(sockets, state_dir / "results", state_dir / "update" / "results")
    engine = UpdateEngine(
        state_dir,
        FolderSlots(state_dir / "slots-data"),
        serving,
        lambda request: [staged],
        max_steps=args.get("max_steps", 32),
        retry_base=0.01,
        retry_cap=0.01,
    )

    def serving_now() -> dict[str, Any] | None:
        client = RunnerClient(sockets / "m.sock", 5.0)
        try:
            answer = client.predict({"x": X})
        except EdgefleetError:
            return None
        finally:
            client.close()
        return {"version": answer["model"]["version"], "y": answer["outputs"]["y"]}

    engine.recover()
    boot = serving_now()
    refused = None
    try:
        engine.update(Request(args["revision"], [{"name": "m"}], {}))
    except EdgefleetError as exc:
        refused = exc.code
    outcome = engine.last_outcome()
    report = {
        "boot": boot,
        "final": serving_now(),
        "refused": refused,
        "record": engine.record().to_dict(),
        "outcome": outcome.__dict__ if outcome else None,
    }
    engine.close()
    print(json.dumps(report), flush=True)


@dataclass
class Models:
    folder: Path
    y: dict[str, list[list[float]]]
    """Expected output for X by model file name."""

    def args(self, name: str, probe_of: str, revision: int) -> dict[str, Any]:
        return {
            "model": str(self.folder / f"{name}.onnx"),
            "probe": str(self.folder / f"{probe_of}.probe"),
            "revision": revision,
        }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Model 1 (installed), model 2 (a good update), model 3 (probe of model 4: bad)."""
    import numpy as np

    from edgefleet.models.pack import make_probe, read_signature
    from tests.support.onnxmodels import affine, expected

    folder = tmp_path_factory.mktemp("models")
    y = {}
    for seed in (1, 2, 3, 4):
        path = affine(folder / f"m{seed}.onnx", seed=seed)
        (folder / f"m{seed}.probe").write_bytes(make_probe(path, read_signature(path)).to_bytes())
        y[f"m{seed}"] = expected(path, np.array(X)).tolist()
    return Models(folder, y)


class Device:
    """One device's folders: state (copied from an installed template) and sockets."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.sockets = Path(tempfile.mkdtemp(prefix="efc-", dir="/tmp"))

    def run(
        self, args: dict[str, Any], kill_after: float | None = None, timeout: float = 120
    ) -> tuple[int, dict[str, Any] | None]:
        """The child's exit code and report; ``kill_after`` seconds SIGKILLs it."""
        full = {**args, "work": str(self.work), "sockets": str(self.sockets)}
        proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(full)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        if kill_after is not None:
            try:
                proc.wait(kill_after)
            except subprocess.TimeoutExpired:
                proc.kill()
        out, err = proc.communicate(timeout=timeout)
        self._wait_runners_gone()
        if proc.returncode != 0:
            return proc.returncode, None
        assert out.strip(), err.decode()[-3000:]
        return 0, json.loads(out.decode().strip().splitlines()[-1])

    def _wait_runners_gone(self) -> None:
        """A killed agent's runners exit when their stdin closes; a restarted agent finds
        its sockets free (as systemd's restart delay gives it on a device)."""
        deadline = time.monotonic() + 10
        for path in self.sockets.glob("*.sock"):
            while time.monotonic() < deadline:
                with socket.socket(socket.AF_UNIX) as s:
                    try:
                        s.connect(str(path))
                    except OSError:
                        break
                time.sleep(0.02)

    def close(self) -> None:
        shutil.rmtree(self.sockets, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder with revision 1 (model 1) committed in slot A."""
    work = tmp_path_factory.mktemp("installed")
    device = Device(work)
    try:
        code, report = device.run(models.args("m1", "m1", 1))
    finally:
        device.close()
    assert code == 0 and report is not None
    assert report["outcome"]["outcome"] == "committed", report
    return work / "state"


@pytest.fixture
def device(installed: Path, tmp_path: Path) -> Iterator[Device]:
    shutil.copytree(installed, tmp_path / "state", symlinks=True)
    d = Device(tmp_path)
    yield d
    d.close()


def _assert_good_slot_serves(report: dict[str, Any], models: Models) -> None:
    record = report["record"]
    active = record["active"]
    assert active is not None and record["slots"][active]["state"] == "good", record
    assert record["trying"] is None, record
    version = report["final"]["version"]
    assert record["slots"][active]["revision"] == int(version)
    model = {"1": "m1", "2": "m2"}.get(version, "m3")
    [got], [want] = report["final"]["y"], models.y[model]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("state", GOOD_PATH)
def test_sigkill_on_entering_each_state_of_a_good_update_then_it_commits(
    state: str, device: Device, models: Models
) -> None:
    update = models.args("m2", "m2", 2)
    code, _ = device.run({**update, "kill_at": state})
    assert code == -signal.SIGKILL
    code, report = device.run(update)
    assert code == 0 and report is not None
    assert report["boot"] is not None and report["boot"]["version"] in ("1", "2"), report
    _assert_good_slot_serves(report, models)
    assert report["outcome"]["revision"] == 2 and report["outcome"]["outcome"] == "committed"
    assert report["final"]["version"] == "2"


@pytest.mark.parametrize("state", ROLLBACK_PATH)
def test_sigkill_on_entering_each_state_of_a_failing_update_then_it_rolls_back(
    state: str, device: Device, models: Models
) -> None:
    update = models.args("m3", "m4", 2)
    code, _ = device.run({**update, "kill_at": state})
    assert code == -signal.SIGKILL
    code, report = device.run(update)
    assert code == 0 and report is not None
    assert report["boot"] is not None and report["boot"]["version"] == "1", report
    _assert_good_slot_serves(report, models)
    assert report["outcome"]["outcome"] == "rolled_back", report["outcome"]
    assert report["final"]["version"] == "1"
    assert report["record"]["slots"]["B"]["bad_revisions"] == [2]


@pytest.mark.parametrize("path", ["good", "failing"])
def test_sigkill_at_random_instants_then_a_good_slot_serves_and_the_update_ends(
    path: str, device: Device, models: Models, installed: Path
) -> None:
    seed = int(os.environ.get("EDGEFLEET_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash seed {seed} (EDGEFLEET_CRASH_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    update = models.args("m2", "m2", 2) if path == "good" else models.args("m3", "m4", 2)
    for run in range(4):
        delay = rng.uniform(0.2, 2.5)
        code, report = device.run(update, kill_after=delay)
        if code == 0:
            break
        code, report = device.run(update)
        assert code == 0 and report is not None, f"seed {seed} run {run} delay {delay:.3f}"
        assert report["boot"] is not None, f"nothing served at boot; seed {seed} run {run}"
        _assert_good_slot_serves(report, models)
        want = "committed" if path == "good" else "rolled_back"
        assert report["outcome"]["outcome"] == want, (seed, run, delay, report["outcome"])
        shutil.rmtree(device.work / "state")  # back to revision 1 for the next instant
        shutil.copytree(installed, device.work / "state", symlinks=True)


def test_a_model_that_kills_the_agent_in_every_try_runs_out_of_attempts(
    device: Device, models: Models
) -> None:
    update = {**models.args("m2", "m2", 2), "kill_at": "checking"}
    runs = 0
    while True:
        runs += 1
        assert runs <= 6, "attempts did not stop the crashes"
        code, report = device.run(update)
        if code == 0:
            break
        assert code == -signal.SIGKILL
    assert runs == 4  # three tries (max_attempts), then the rollback
    assert report is not None and report["outcome"]["outcome"] == "rolled_back"
    assert "no attempts left" in report["outcome"]["reason"]
    _assert_good_slot_serves(report, models)
    assert report["final"]["version"] == "1"


def test_the_step_counter_stops_a_crash_loop_the_attempts_do_not_cover(
    device: Device, models: Models
) -> None:
    """Dying on every entry to ``committing`` spends no attempt: only the counter ends it."""
    update = {**models.args("m2", "m2", 2), "kill_at": "committing", "max_steps": 9}
    runs = 0
    while True:
        runs += 1
        assert runs <= 8, "the step counter did not stop the loop"
        code, report = device.run(update)
        if code == 0:
            break
    assert runs == 4  # committing entered as steps 7, 8 and 9; the 10th is a loop
    assert report is not None and report["outcome"]["outcome"] == "rolled_back"
    assert "update loop" in report["outcome"]["reason"]
    _assert_good_slot_serves(report, models)
    assert report["final"]["version"] == "1"


if __name__ == "__main__":
    child(json.loads(sys.argv[1]))
