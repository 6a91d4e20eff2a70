"""Drift on the device: the runner (a real child process, real onnxruntime) sketches its
live traffic against the model's drift reference and writes each closed window to the
device's drift store, which keeps it until the controller has it."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.drift_windows import DriftWindows
from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
from edgefleet.drift.reference import compute
from edgefleet.models.pack import read_signature
from edgefleet.wire import DriftWindow
from tests.support.onnxmodels import affine

FEATURES = 4


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def model(short_dir: Path) -> tuple[Path, Path]:
    path = affine(short_dir / "affine.onnx", inputs=FEATURES, outputs=3, seed=3)
    x = np.random.default_rng(0).normal(size=(1000, FEATURES)).astype(np.float32)
    np.savez(short_dir / "ref.npz", x=x)
    reference = short_dir / "affine.reference.json"
    reference.write_bytes(compute(path, short_dir / "ref.npz", read_signature(path)).to_bytes())
    return path, reference


def runner(short_dir: Path, model: tuple[Path, Path], **changes: object) -> Runner:
    values: dict = {
        "model": model[0],
        "socket": short_dir / "runner.sock",
        "results": short_dir / "results",
        "name": "affine",
        "drift_reference": model[1],
        "drift_window": 2,
        "artifact": "registry.test/affine@sha256:" + "0" * 64,
        "start_timeout": 20.0,
    }
    values.update(changes)
    return Runner(RunnerConfig(**values))


def feed(r: Runner, shift: float, n: int = 300) -> None:
    rows = np.random.default_rng(5).normal(shift, 1.0, size=(n, FEATURES)).astype(np.float32)
    for row in rows:
        r.predict({"x": [row.tolist()]})


def windows(short_dir: Path) -> list[dict]:
    store = DriftWindows(short_dir / "results")
    try:
        return store.for_report(16)
    finally:
        store.close()


def test_a_shifted_stream_closes_a_window_scored_as_drift(
    short_dir: Path, model: tuple[Path, Path]
) -> None:
    with runner(short_dir, model) as r:
        # A window (2 s, on the clock) closes on the runner's timer; one fed fewer than
        # MIN_SAMPLES rows (a slow machine, a window boundary) is closed unscored: feed on
        # until a scored one has closed.
        deadline = time.monotonic() + 30
        while not (scored := [w for w in windows(short_dir) if "inputs" in w["scores"]]):
            assert time.monotonic() < deadline, f"no scored window: {windows(short_dir)}"
            feed(r, 1.5)
            time.sleep(0.5)
    doc = scored[0]
    window = DriftWindow.model_validate(doc)  # what the status report carries
    assert window.model == "affine" and window.artifact.startswith("registry.test/affine@")
    assert window.seconds == 2 and window.seen >= 1 and window.samples == window.seen
    assert window.scores["inputs"]["psi"] > 0.25
    assert len(json.dumps(doc)) < 2048


def test_an_unshifted_stream_reads_as_stable(short_dir: Path, model: tuple[Path, Path]) -> None:
    window = 300
    room = window - time.time() % window  # windows are aligned on the clock
    if room < 60:
        time.sleep(room + 0.5)  # start in a fresh window: no boundary while feeding
    with runner(short_dir, model, drift_window=window) as r:
        start = time.time()
        feed(r, 0.0, n=600)
        assert time.time() - start < 50, "the window must not close while feeding"
    # a runner stopped mid-window keeps no partial window: nothing to report yet
    assert windows(short_dir) == []


def test_a_reference_that_does_not_fit_the_model_costs_no_answer(
    short_dir: Path, model: tuple[Path, Path]
) -> None:
    """A reference of a wider model: the sketch cannot count, the runner logs it once and
    keeps answering; an unreadable one: the model serves without drift monitoring."""
    wide = affine(short_dir / "wide.onnx", inputs=8, outputs=3, seed=4)
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    np.savez(short_dir / "wide.npz", x=x)
    (short_dir / "wide.json").write_bytes(
        compute(wide, short_dir / "wide.npz", read_signature(wide)).to_bytes()
    )
    with runner(short_dir, (model[0], short_dir / "wide.json")) as r:
        for _ in range(3):
            assert r.predict({"x": [[0.0] * FEATURES]})["outputs"]
    assert r.config.log_file.read_text().count("drift monitoring of affine stopped") == 1
    (short_dir / "bad.json").write_text("{}")
    with runner(short_dir, (model[0], short_dir / "bad.json")) as r:
        assert r.predict({"x": [[0.0] * FEATURES]})["outputs"]
    assert "serving affine without drift monitoring" in r.config.log_file.read_text()


def test_windows_stay_until_delivered_and_arrive_once(short_dir: Path) -> None:
    store = DriftWindows(short_dir)
    base = {"model": "m", "digest": "sha256:1", "artifact": "", "reference": "sha256:r"}
    now = 10_000.0
    for start in (0, 60, 120):
        store.put(
            {**base, "start": start, "seconds": 60, "seen": 2, "samples": 2, "counts": [1, 1]}
        )
    sent = store.for_report(16, now=now)
    assert [w["start"] for w in sent] == [0, 60, 120]
    store.delivered(sent)
    assert store.undelivered() == 0 and store.for_report(16, now=now) == []
    # the latest window travels while recent, once more, never the delivered backlog
    assert [w["start"] for w in store.for_report(16, now=130)] == [120]
    # a runner restarted within a window closes it again: merged, sent again
    store.put({**base, "start": 120, "seconds": 60, "seen": 3, "samples": 3, "counts": [2, 1]})
    [again] = store.for_report(16, now=now)
    assert again["seen"] == 5 and again["counts"] == [3, 2]
    store.close()
    reopened = DriftWindows(short_dir)  # on disk: survives the agent's restart
    assert reopened.undelivered() == 1
    reopened.close()
