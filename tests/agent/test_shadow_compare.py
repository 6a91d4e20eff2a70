"""The shadow comparison inside the runner, in process: real onnxruntime sessions of tiny
ONNX models (an agreeing candidate has the active model's weights, a disagreeing one
other weights), figures checked against NumPy computed from the weights, and the store
the windows go to."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.runner.model import Model, load
from edgefleet.agent.runner.shadow import QUEUE_SIZE, Shadow, compare
from edgefleet.agent.shadow_windows import KEEP_DELIVERED_S, SETTLE_S, ShadowWindows
from edgefleet.errors import ConfigError
from edgefleet.wire import ShadowWindow
from tests.support.onnxmodels import affine, expected

CLASSES = 5


def _model(path: Path, seed: int, inputs: int = 4) -> Model:
    return load(affine(path, inputs=inputs, outputs=CLASSES, seed=seed), "m", "", None, 1)


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _independent(active: Path, candidate: Path, batches: list[np.ndarray]) -> dict:
    """The window's figures from the models' weights, without onnxruntime."""
    agree = rows = 0
    diff_sum, diff_max = 0.0, 0.0
    for x in batches:
        a, c = expected(active, x), expected(candidate, x)
        diff = np.abs(a.astype(np.float64) - c.astype(np.float64))
        rows += len(x)
        agree += int((a.argmax(axis=1) == c.argmax(axis=1)).sum())
        diff_sum += float(diff.mean()) * len(x)
        diff_max = max(diff_max, float(diff.max()))
    return {"rows": rows, "agree": agree, "diff_sum": diff_sum, "diff_max": diff_max}


def _run(shadow: Shadow, active: Model, batches: list[np.ndarray]) -> None:
    shadow.start()
    for x in batches:
        values, ms = active.run_arrays({"x": x})
        shadow.offer({"x": x}, values, ms)
        time.sleep(0.002)  # the worker keeps up: nothing skipped
    shadow.stop()


def test_a_disagreeing_candidate_is_measured_as_numpy_measures_it(tmp_path: Path) -> None:
    active, candidate = _model(tmp_path / "a.onnx", 1), _model(tmp_path / "c.onnx", 2)
    store = ShadowWindows(tmp_path / "results")
    rng = np.random.default_rng(7)
    batches = [rng.normal(size=(n, 4)).astype(np.float32) for n in (1, 3, 100, 7)]
    clock = FrozenClock(1_000_000.0)
    shadow = Shadow(
        active,
        candidate,
        store,
        key="rollout-7",
        active_digest="sha256:" + "a" * 64,
        candidate_digest="sha256:" + "c" * 64,
        window_seconds=60,
        clock=clock,
    )
    _run(shadow, active, batches)

    [doc] = store.for_report(16, now=clock.now + 60 + SETTLE_S)
    window = ShadowWindow.model_validate(doc)
    want = _independent(tmp_path / "a.onnx", tmp_path / "c.onnx", batches)
    assert (window.key, window.model, window.start, window.seconds) == (
        "rollout-7",
        "m",
        999_960,
        60,
    )
    assert window.compared == window.top1_total == want["rows"] == 111  # rows, not calls
    assert window.top1_agree == want["agree"] < want["rows"]  # other weights disagree
    assert window.abs_diff_sum == pytest.approx(want["diff_sum"], rel=1e-5)
    assert window.abs_diff_max == pytest.approx(want["diff_max"], rel=1e-5)
    assert (window.skipped, window.errors) == (0, 0)
    assert window.active_latency.p50_ms is not None and window.candidate_latency.p95_ms


def test_an_agreeing_candidate_agrees_on_every_row_with_no_difference(tmp_path: Path) -> None:
    active, same = _model(tmp_path / "a.onnx", 1), _model(tmp_path / "same.onnx", 1)
    store = ShadowWindows(tmp_path / "results")
    clock = FrozenClock(5_000.0)
    shadow = Shadow(
        active, same, store, key="parent", active_digest="a", candidate_digest="b", clock=clock
    )
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    _run(shadow, active, [x, x[:1]])
    [window] = store.for_report(16, now=clock.now + 300 + SETTLE_S)
    assert window["compared"] == window["top1_total"] == window["top1_agree"] == 51
    assert window["abs_diff_sum"] == 0.0 and window["abs_diff_max"] == 0.0


def test_compare_counts_rows_and_no_top1_for_a_single_value_output() -> None:
    a = np.array([[0.1], [0.2], [0.3]], dtype=np.float32)
    c = np.array([[0.1], [0.5], [0.3]], dtype=np.float32)
    found = compare([a], [c])
    assert (found.rows, found.top1_rows, found.top1_agree) == (3, 0, 0)
    assert found.abs_diff_mean == pytest.approx(0.1) and found.abs_diff_max == pytest.approx(0.3)


def test_a_candidate_with_other_inputs_is_refused(tmp_path: Path) -> None:
    active, wider = _model(tmp_path / "a.onnx", 1), _model(tmp_path / "w.onnx", 1, inputs=6)
    with pytest.raises(ConfigError, match="input 'x' has shape"):
        Shadow(
            active,
            wider,
            ShadowWindows(tmp_path / "results"),
            key="parent",
            active_digest="a",
            candidate_digest="b",
        )


def test_a_full_queue_counts_skipped_rows_and_never_waits(tmp_path: Path) -> None:
    active = _model(tmp_path / "a.onnx", 1)
    # a real candidate that is slower than the traffic: it sums 40 MB of weights per call
    slow = affine(tmp_path / "slow.onnx", outputs=CLASSES, seed=2, pad_bytes=40_000_000)
    candidate = load(slow, "m", "", None, 1)
    store = ShadowWindows(tmp_path / "results")
    clock = FrozenClock(9_000.0)
    shadow = Shadow(
        active, candidate, store, key="k", active_digest="a", candidate_digest="b", clock=clock
    )
    shadow.start()
    x = np.ones((10, 4), dtype=np.float32)
    values, ms = active.run_arrays({"x": x})
    offers = []
    calls = QUEUE_SIZE + 40
    for _ in range(calls):
        started = time.perf_counter()
        shadow.offer({"x": x}, values, ms)
        offers.append(time.perf_counter() - started)
    assert max(offers) < 0.05  # a full queue costs the caller nothing it can wait on
    shadow.stop()
    [window] = store.for_report(16, now=clock.now + 300 + SETTLE_S)
    assert window["compared"] + window["skipped"] == calls * 10  # rows: 10 a call
    assert window["skipped"] >= 20 * 10  # the candidate ran a few, the queue held 16
    assert window["compared"] >= QUEUE_SIZE * 10  # what was queued is still compared
    assert window["errors"] == 0


def test_windows_merge_across_a_restart_and_are_delivered_once(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    part = {
        "key": "rollout-3",
        "model": "m",
        "active_digest": "a",
        "candidate_digest": "c",
        "start": 600,
        "seconds": 300,
        "compared": 10,
        "skipped": 1,
        "errors": 0,
        "top1_total": 10,
        "top1_agree": 9,
        "abs_diff_sum": 0.5,
        "abs_diff_max": 0.2,
        "active_latency": {"p50_ms": 1.0, "p95_ms": 2.0},
        "candidate_latency": {"p50_ms": 3.0, "p95_ms": 4.0},
    }
    first = ShadowWindows(folder)
    first.put(part)
    assert first.for_report(16, now=899) == []  # not ended yet: its rest may come
    first.close()
    second = ShadowWindows(folder)  # a restarted runner, then the agent, open it again
    second.put(part | {"compared": 4, "top1_total": 4, "top1_agree": 4, "abs_diff_max": 0.7})
    [doc] = second.for_report(16, now=900 + SETTLE_S)
    assert (doc["compared"], doc["skipped"], doc["top1_agree"]) == (14, 2, 13)
    assert doc["abs_diff_sum"] == pytest.approx(1.0) and doc["abs_diff_max"] == 0.7
    second.delivered([doc], now=900 + SETTLE_S)
    assert second.for_report(16, now=1000) == []
    # a part arriving late goes out again, whole, for the controller to store over
    second.put(part | {"compared": 1, "skipped": 0, "top1_total": 1, "top1_agree": 1})
    [again] = second.for_report(16, now=1000)
    assert again["compared"] == 15
    second.delivered([again], now=900 + KEEP_DELIVERED_S + 1)
    assert second.undelivered() == 0
    assert second.for_report(16, now=10_000) == []


def _labelled(path: Path, seed: int) -> Path:
    """A classifier as scikit-learn's converters shape one: ``label`` (int64, one per row)
    first, then the class scores."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((4, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "labelled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES]),
        ],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_label_output_counts_its_rows_and_agrees_label_by_label(tmp_path: Path) -> None:
    a_path, c_path = _labelled(tmp_path / "a.onnx", 1), _labelled(tmp_path / "c.onnx", 2)
    active, candidate = load(a_path, "m", "", None, 1), load(c_path, "m", "", None, 1)
    x = np.random.default_rng(9).normal(size=(64, 4)).astype(np.float32)
    a_out, _ = active.run_arrays({"x": x})
    c_out, _ = candidate.run_arrays({"x": x})
    found = compare(list(a_out.values()), list(c_out.values()))

    def weights(path: Path) -> np.ndarray:
        return numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])

    scores_a, scores_c = x @ weights(a_path), x @ weights(c_path)
    diff = np.abs(scores_a.astype(np.float64) - scores_c)
    assert (found.rows, found.top1_rows) == (64, 64)
    assert found.top1_agree == int((scores_a.argmax(1) == scores_c.argmax(1)).sum()) < 64
    assert found.abs_diff_mean == pytest.approx(diff.mean(), rel=1e-5)  # labels left out
    assert found.abs_diff_max == pytest.approx(diff.max(), rel=1e-5)
