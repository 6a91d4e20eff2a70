"""Drift sketch budgets (issue 14): the time a sketch update adds per inference, and the
bytes of the sketches a status report carries for three models.

    python bench/drift.py [--updates 20000] [--rate 10]

Update: ``Sketch.update`` with one inference of one row (inputs and outputs as the
runner has them, NumPy arrays), for a 32-feature, 10-class model, sampling rate 1 (every
inference counted, the worst case); median and p99 of ``--updates`` calls after 500
unmeasured ones, beside onnxruntime's own ``session.run`` for the same row.

Wire: three models whose windows were filled with an hour of traffic at ``--rate``
inferences a second (counts of four to five digits): a 32-feature 10-class classifier, a
32-feature regressor, and a 64-feature (32 sketched) 1,000-class classifier (20 classes
kept, the rest in one bin); the JSON of their ``to_wire()`` forms as a status report
would carry them (compact separators).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure
from harness import median

from edgefleet.drift.reference import compute
from edgefleet.drift.sketch import Sketch
from edgefleet.models.pack import read_signature
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
    payload = json.dumps({"drift": wires}, separators=(",", ":")).encode()
    sizes = [len(json.dumps(w, separators=(",", ":"))) for w in wires]
    print(
        f"status drift payload, 3 models, windows of {per_window} inferences: "
        f"{len(payload)} bytes (per model {', '.join(map(str, sizes))})"
    )
    figure(
        "drift sketches in a status report, 3 models",
        len(payload) / 1024,
        "KB",
        budget=8,
        note=f"JSON, windows of {per_window} inferences",
        settings={"models": 3, "rate": args.rate, "window_s": WINDOW},
    )


if __name__ == "__main__":
    main()
