"""The runner process with a candidate in shadow: a real child, real onnxruntime. Callers
get the active model's answers only; the candidate's comparisons land in the results
folder's shadow store, and a candidate that cannot run leaves the active model serving."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
from edgefleet.agent.shadow_windows import SETTLE_S, ShadowWindows
from edgefleet.wire import ShadowWindow
from tests.agent.conftest import wait_until
from tests.support.onnxmodels import affine, expected

ACTIVE = "registry.test/m@sha256:" + "a" * 64
CANDIDATE = "registry.test/m@sha256:" + "c" * 64


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _runner(folder: Path, candidate: Path | None, **changes: object) -> Runner:
    values: dict = {
        "model": affine(folder / "active.onnx", outputs=3, seed=1),
        "socket": folder / "m.sock",
        "results": folder / "results",
        "name": "m",
        "artifact": ACTIVE,
        "shadow_model": candidate,
        "shadow_key": "rollout-9",
        "shadow_reference": CANDIDATE,
        "shadow_window": 2,
        "start_timeout": 20.0,
    }
    values.update(changes)
    return Runner(RunnerConfig(**values))


def _windows(folder: Path) -> list[dict]:
    store = ShadowWindows(folder / "results")
    try:
        return store.for_report(16, max_bytes=1 << 20, now=time.time() + 3600)
    finally:
        store.close()


def _shadow_running(r: Runner) -> bool:
    return bool(r.health().get("shadow", {}).get("running"))


def test_callers_get_the_active_models_answers_while_the_candidate_is_compared(
    short_dir: Path,
) -> None:
    candidate = affine(short_dir / "candidate.onnx", outputs=3, seed=2)
    rows = np.random.default_rng(3).normal(size=(40, 4)).astype(np.float32)
    with _runner(short_dir, candidate) as r:
        wait_until(lambda: _shadow_running(r), 20, "the candidate loaded")
        for i in range(0, 40, 4):
            answer = r.predict({"x": rows[i : i + 4].tolist()})
            active = expected(short_dir / "active.onnx", rows[i : i + 4])
            assert np.allclose(answer["outputs"]["y"], active, atol=1e-5)
            assert not np.allclose(
                answer["outputs"]["y"], expected(candidate, rows[i : i + 4]), atol=1e-3
            )
        wait_until(lambda: r.health()["shadow"]["compared"] == 40, 10, "40 rows compared")
    windows = [ShadowWindow.model_validate(w) for w in _windows(short_dir)]
    assert sum(w.compared for w in windows) == 40  # rows, not the 10 calls
    assert {(w.key, w.model, w.active_digest, w.candidate_digest) for w in windows} == {
        ("rollout-9", "m", "sha256:" + "a" * 64, "sha256:" + "c" * 64)
    }
    want = (expected(short_dir / "active.onnx", rows).argmax(1)) == (
        expected(candidate, rows).argmax(1)
    )
    assert sum(w.top1_agree for w in windows) == int(want.sum())


def test_windows_survive_a_runner_restart_and_merge(short_dir: Path) -> None:
    candidate = affine(short_dir / "candidate.onnx", outputs=3, seed=1)  # same weights
    x = [[0.5, -1.0, 2.0, 0.25]]
    with _runner(short_dir, candidate, shadow_window=3600) as r:
        wait_until(lambda: _shadow_running(r), 20, "the candidate loaded")
        for _ in range(5):
            r.predict({"x": x})
        wait_until(lambda: r.health()["shadow"]["compared"] == 5, 10, "5 compared")
    # stopped within its hour: the open window was stored, not reported before its end
    store = ShadowWindows(short_dir / "results")
    assert store.for_report(16) == [] and store.undelivered() == 1
    store.close()
    with _runner(short_dir, candidate, shadow_window=3600) as r:
        wait_until(lambda: _shadow_running(r), 20, "the candidate loaded again")
        for _ in range(3):
            r.predict({"x": x})
        wait_until(lambda: r.health()["shadow"]["compared"] == 3, 10, "3 compared")
    [window] = _windows(short_dir)
    assert window["compared"] == window["top1_agree"] == 8
    assert window["abs_diff_max"] == 0.0
    assert window["start"] + window["seconds"] + SETTLE_S > time.time()  # one window, merged


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: affine(d / "wide.onnx", inputs=6, outputs=3, seed=2), "input 'x' has shape"),
        (lambda d: d / "missing.onnx", "does not exist"),
    ],
    ids=["other-inputs", "missing-file"],
)
def test_a_candidate_that_cannot_run_leaves_the_active_model_serving(
    short_dir: Path, make, reason: str
) -> None:
    with _runner(short_dir, make(short_dir)) as r:
        wait_until(lambda: "shadow" in r.health(), 20, "the candidate refused")
        state = r.health()["shadow"]
        assert not state["running"] and reason in (state["reason"] or "")
        x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
        answer = r.predict({"x": x.tolist()})
        assert np.allclose(answer["outputs"]["y"], expected(short_dir / "active.onnx", x))
    log = (short_dir / "m.sock.log").read_text()
    assert log.count("without its shadow candidate") == 1


def test_a_runner_without_a_plan_loads_no_candidate(short_dir: Path) -> None:
    with _runner(short_dir, None) as r:
        r.predict({"x": [[0.5, -1.0, 2.0, 0.25]]})
        assert "shadow" not in r.health()
    assert not (short_dir / "results" / "shadow.db").exists()
