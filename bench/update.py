"""The A/B update's budgets: a failed health check back to the old model, and a good
update of a 50 MB model from staged to serving.

    python bench/update.py [--runs 7] [--model-mb 50]

Both run the real engine (``edgefleet.agent.update``) on folder slots with real
runners, in this process, below the pull: the stager hands over a file already in
the blob store, as after a download.

1. Failed check -> old slot serving: an update whose latency budget cannot be met.
   A client predicts on the main socket every 2 ms throughout; the figure is the time
   from the moment the failing check returned (its deadline, as far as the user is
   concerned) to the next answer on the main socket, and the longest silence the
   client saw during the whole attempt. Budget < 1 s. (The old runner never stops, so
   this is one poll interval.) When the attempt ended (record saved, candidate stopped,
   evidence written) is printed too.
2. Good update, staged to serving: ``UpdateEngine.update`` called with the file staged
   until the new model answers on the main socket: link and hash the set, write the
   inactive slot (fsynced), read it back past the page cache, start the candidate,
   model_load + probe checks, restart the main runner on the new slot, write the
   evidence. Budget < 3 s. The commit gap (main socket silent) is printed too.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure
from harness import median

from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.slots.folder import FolderSlots
from edgefleet.agent.update import states
from edgefleet.agent.update.attempt import Request
from edgefleet.agent.update.engine import UpdateEngine
from edgefleet.agent.update.modelset import StagedModel
from edgefleet.agent.update.switch import ModelServing
from edgefleet.agent.update.transitions import State
from edgefleet.errors import EdgefleetError
from edgefleet.models.pack import make_probe, read_signature
from edgefleet.oci import digest as dg
from tests.support.onnxmodels import affine

X = [[0.5, -1.0, 2.0, 0.25]]


class Poller:
    """Predicts on the main socket every 2 ms; keeps the instants of answers."""

    def __init__(self, socket: Path) -> None:
        self.client = RunnerClient(socket, 5.0)
        self.answers: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            try:
                version = self.client.predict({"x": X})["model"]["version"]
            except EdgefleetError:
                continue
            self.answers.append((time.monotonic(), version))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def longest_silence(self) -> float:
        times = [t for t, _ in self.answers]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class CheckTimer:
    """Wraps the checking state to note when its (failing) checks returned."""

    def __init__(self) -> None:
        self.inner = states.STATES[State.checking]
        self.returned_at = 0.0

    def run(self, ctx: states.Context) -> states.Event:
        event = self.inner.run(ctx)
        self.returned_at = time.monotonic()
        return event


def staged(path: Path, version: str) -> StagedModel:
    probe = make_probe(path, read_signature(path)).to_bytes()
    return StagedModel("m", path, dg.of_file(path), version, "", probe)


def engine_in(work: Path, plan: dict[int, StagedModel]) -> UpdateEngine:
    state = work / "state"
    serving = ModelServing(work / "s", state / "results", state / "update" / "results")
    return UpdateEngine(
        state, FolderSlots(state / "slots-data"), serving, lambda r: [plan[r.revision]]
    )


def failed_check(work: Path, runs: int) -> None:
    old = staged(affine(work / "old.onnx", seed=1), "1")
    new = staged(affine(work / "new.onnx", seed=2), "2")
    timer = CheckTimer()
    states.STATES[State.checking] = timer
    back, silences, recorded = [], [], []
    for run in range(runs):
        folder = work / f"failed{run}"
        plan = {1: old}
        engine = engine_in(folder, plan)
        engine.update(Request(1, [{}]))
        poller = Poller(folder / "s" / "m.sock")
        time.sleep(0.05)
        plan[2] = new
        slow = {"health_checks": [{"type": "latency", "p95_ms": 0.001, "samples": 5}]}
        outcome = engine.update(Request(2, [{}], slow))
        done = time.monotonic()
        time.sleep(0.05)
        poller.stop()
        engine.close()
        assert outcome is not None and outcome.outcome == "rolled_back", outcome
        after = [t for t, v in poller.answers if t >= timer.returned_at and v == "1"]
        back.append((after[0] - timer.returned_at) * 1000)
        silences.append(poller.longest_silence() * 1000)
        recorded.append((done - timer.returned_at) * 1000)
    states.STATES[State.checking] = timer.inner
    print(
        f"failed check -> old model answering on the main socket: median {median(back):.1f} ms "
        f"(budget 1000 ms); longest silence during the attempt {median(silences):.1f} ms; "
        f"attempt ended (record saved, candidate stopped, evidence written) "
        f"{median(recorded):.1f} ms after the check "
        f"[{runs} runs]"
    )
    figure(
        "failed health check to the old slot serving",
        median(back),
        "ms",
        budget=1000,
        note=f"median of {runs}; longest silence {median(silences):.1f} ms",
    )


def good_update(work: Path, runs: int, model_mb: int) -> None:
    old = staged(affine(work / "small.onnx", seed=1), "1")
    big = staged(affine(work / "big.onnx", seed=2, pad_bytes=model_mb * 1_000_000), "2")
    totals, gaps = [], []
    for run in range(runs):
        folder = work / f"good{run}"
        engine = engine_in(folder, {1: old, 2: big})
        engine.update(Request(1, [{}]))
        client = RunnerClient(folder / "s" / "m.sock", 10.0)
        started = time.monotonic()
        outcome = engine.update(Request(2, [{}]))
        version = client.predict({"x": X})["model"]["version"]
        totals.append((time.monotonic() - started) * 1000)
        client.close()
        engine.close()
        assert outcome is not None and outcome.outcome == "committed" and version == "2"
        gaps.append(outcome.commit_gap_ms or 0.0)
        shutil.rmtree(folder)
    print(
        f"good update of a {big.path.stat().st_size / 1e6:.0f} MB model, staged -> serving on "
        f"the main socket: median {median(totals):.0f} ms (budget 3000 ms); main socket "
        f"silent during the takeover {median(gaps):.0f} ms [{runs} runs]"
    )
    figure(
        f"good update of a {model_mb} MB model, staged to serving",
        median(totals),
        "ms",
        budget=3000 if model_mb <= 50 else None,
        note=f"median of {runs}; main socket silent {median(gaps):.0f} ms",
        settings={"model": f"{model_mb} MB"},
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--model-mb", type=int, default=50)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="efu-bench-", dir="/tmp"))
    try:
        failed_check(work, args.runs)
        good_update(work, args.runs, args.model_mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
