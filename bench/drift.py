"""Drift sketch budgets (issue 14): the time a sketch update adds per inference, and the
bytes of the sketches a status report carries for three models.

    python bench/drift.py [--updates 20000] [--rate 10] [--predicts 5000]

Update: ``Sketch.update`` with one inference of one row (inputs and outputs as the
runner has them, NumPy arrays), for a 32-feature, 10-class model, sampling rate 1 (every
inference counted, the worst case); median and p99 of ``--updates`` calls after 500
unmeasured ones, beside onnxruntime's own ``session.run`` for the same row.

Runner: ``Service.predict`` of the runner (JSON body parsed, onnxruntime, the result
record to a store that discards it) with and without the drift monitor, calls interleaved;
the added time is the difference of the medians (``--predicts`` calls each).

Wire: three models whose windows were filled with an hour of traffic at ``--rate``
inferences a second (counts of four to five digits): a 32-feature 10-class classifier, a
32-feature regressor, and a 64-feature (32 sketched) 1,000-class classifier (20 classes
kept, the rest in one bin); the bytes of the agent's status report carrying their
windows (``StatusReport`` JSON, with model names, digests and the pinned reference).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure
from harness import median

from edgefleet.agent.drift_windows import DriftWindows
from edgefleet.agent.runner.drift import DriftMonitor
from edgefleet.agent.runner.model import load
from edgefleet.agent.runner.server import Service
from edgefleet.drift.reference import compute
from edgefleet.drift.sketch import Sketch
from edgefleet.models.pack import read_signature
from edgefleet.wire import DriftWindow, StatusReport
from tests.support.onnxmodels import affine

WINDOW = 3600.0


def _model(work: Path, name: str, inputs: int, outputs: int) -> tuple[Sketch, ort.InferenceSession]:
    path = affine(work / f"{name}.onnx", inputs=inputs, outputs=outputs, seed=len(name))
    x = np.random.default_rng(0).normal(size=(2000, inputs)).astype(np.float32)
    np.savez(work / f"{name}.npz", x=x)
    reference = compute(path, work / f"{name}.npz", read_signature(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return Sketch(reference, window_seconds=WINDOW, now=0.0), session


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--updates", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=10.0, help="inferences a second, for the wire")
    p.add_argument("--predicts", type=int, default=5000, help="runner calls, with and without")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="efd-bench-", dir="/tmp"))

    sketch, session = _model(work, "classifier", 32, 10)
    rng = np.random.default_rng(1)
    xs = rng.normal(0.3, 1.0, size=(args.updates + 500, 32)).astype(np.float32)
    ys = session.run(None, {"x": xs})[0]
    update, run = [], []
    for i in range(len(xs)):
        x, y = xs[i : i + 1], ys[i : i + 1]
        t = time.perf_counter()
        sketch.update({"x": x}, {"y": y}, now=1.0)
        spent = time.perf_counter() - t
        t = time.perf_counter()
        session.run(None, {"x": x})
        if i >= 500:
            update.append(spent * 1e6)
            run.append((time.perf_counter() - t) * 1e6)
    p99 = sorted(update)[int(len(update) * 0.99)]
    print(
        f"sketch update, 32 features + 10 classes + confidence, 1 row: median "
        f"{median(update):.1f} us (p99 {p99:.1f} us) over {args.updates} updates; "
        f"session.run of the same row: median {median(run):.1f} us; sketch memory "
        f"{sketch.nbytes} bytes"
    )
    figure(
        "drift sketch update per inference, 32 features",
        median(update),
        "us",
        budget=20,
        note=f"median of {args.updates} updates, sampling rate 1",
        settings={"features": 32, "classes": 10, "rows": 1},
    )

    models = [
        (sketch, session, 32),
        (*_model(work, "regressor", 32, 1), 32),
        (*_model(work, "wide", 64, 1000), 64),
    ]
    per_window = int(WINDOW * args.rate)
    wires = []
    for s, sess, width in models:
        s.roll(now=WINDOW)
        x = rng.normal(0.3, 1.0, size=(per_window, width)).astype(np.float32)
        y = sess.run(None, {"x": x})[0]
        for i in range(per_window):
            s.update({"x": x[i : i + 1]}, {"y": y[i : i + 1]}, now=WINDOW + 1.0)
        s.roll(now=2 * WINDOW)
        wires.append(s.to_wire())
    artifact = "registry.example.com:5000/vision/detector@sha256:" + "ab" * 32
    windows = [
        DriftWindow.model_validate(
            {"model": name, "digest": "sha256:" + "cd" * 32, "artifact": artifact} | w
        )
        for name, w in zip(("classifier", "regressor", "wide"), wires, strict=True)
    ]
    report = StatusReport(applied_revision=12, drift=windows)
    payload = report.model_dump_json().encode()
    bare = len(StatusReport(applied_revision=12).model_dump_json())
    sizes = [len(w.model_dump_json()) for w in windows]
    print(
        f"status report with the drift windows of 3 models (windows of {per_window} "
        f"inferences): {len(payload)} bytes, {bare} without them (per model "
        f"{', '.join(map(str, sizes))})"
    )
    figure(
        "status report with drift windows, 3 models",
        len(payload) / 1024,
        "KB",
        budget=8,
        note=f"the agent's JSON, windows of {per_window} inferences",
        settings={"models": 3, "rate": args.rate, "window_s": WINDOW},
    )
    _runner_cost(work, args.predicts)


class _Discard:
    """A result store that keeps nothing: the fsync of the real one would drown the
    microseconds measured here (bench/buffer.py measures it)."""

    def append(self, record: dict[str, Any]) -> None:
        pass


def _runner_cost(work: Path, predicts: int) -> None:
    """The runner's own predict path (parse the JSON body, onnxruntime, result record)
    with and without its drift monitor, calls interleaved so both meet the same machine."""
    path = affine(work / "served.onnx", inputs=32, outputs=10, seed=9)
    x = np.random.default_rng(0).normal(size=(2000, 32)).astype(np.float32)
    np.savez(work / "served.npz", x=x)
    reference = work / "served.reference.json"
    reference.write_bytes(compute(path, work / "served.npz", read_signature(path)).to_bytes())
    loaded = load(path, "served", "1", None, 1)
    plain = Service(loaded, _Discard())
    monitor = DriftMonitor(
        reference,
        loaded.ref,
        DriftWindows(work / "drift-store"),
        window_seconds=WINDOW,
        sample_rate=1.0,
        input_names=["x"],
    )
    watched = Service(loaded, _Discard(), drift=monitor)
    rows = np.random.default_rng(2).normal(0.3, 1.0, size=(predicts + 200, 32))
    bodies = [json.dumps({"inputs": {"x": [r.tolist()]}}).encode() for r in rows]
    without, with_drift = [], []
    for i, body in enumerate(bodies):
        for service, out in ((plain, without), (watched, with_drift)):
            t = time.perf_counter()
            service.predict(body)
            if i >= 200:
                out.append((time.perf_counter() - t) * 1e6)
    added = median(with_drift) - median(without)
    print(
        f"runner predict (in process, 32 features, 10 classes, 1 row): median "
        f"{median(without):.1f} us without the drift monitor, {median(with_drift):.1f} us "
        f"with it: {added:.1f} us added, over {predicts} calls each"
    )
    figure(
        "drift monitor added to the runner's predict",
        added,
        "us",
        budget=20,
        note=f"median with minus median without, {predicts} interleaved calls, sampling rate 1",
        settings={"features": 32, "classes": 10, "rows": 1},
    )


if __name__ == "__main__":
    main()
