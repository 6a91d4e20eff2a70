"""The inference runner's budgets: model load, per-call overhead of the local API, RSS.

    python bench/runner.py [--loads 10] [--calls 2000] [--model-mb 10]

Model load is ``edgefleet.agent.runner.model.load`` in this process, the code the
child runs at start (read the file, check its digest, build the onnxruntime
session), for a model padded to ``--model-mb``. Per-call overhead is the median of
``Runner.predict`` (JSON over the Unix socket, validation, result store write)
minus the median of ``session.run`` in this process, same tiny model, same input,
same session options. RSS is read from /proc for the idle child with each model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure
from harness import median

from edgefleet.agent.runner import model
from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
from tests.support.onnxmodels import affine


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _timed(fn: object, n: int) -> list[float]:
    """Milliseconds per call of ``fn()``, ``n`` times after 50 unmeasured warm-up calls."""
    out = []
    for i in range(n + 50):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        if i >= 50:
            out.append((time.perf_counter() - t) * 1000)
    return out


def _config(work: Path, path: Path) -> RunnerConfig:
    return RunnerConfig(model=path, socket=work / f"{path.stem}.sock", results=work / "results")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--loads", type=int, default=10)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--model-mb", type=int, default=10)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="efr-bench-", dir="/tmp"))
    big = affine(work / "big.onnx", pad_bytes=args.model_mb * 1024 * 1024)
    tiny = affine(work / "tiny.onnx")

    loads = []
    for _ in range(args.loads):
        t = time.perf_counter()
        model.load(big, "big", "", None, threads=1)
        loads.append((time.perf_counter() - t) * 1000)
    print(
        f"model load, {big.stat().st_size / 1e6:.1f} MB: median {median(loads):.1f} ms "
        f"(min {min(loads):.1f}, max {max(loads):.1f}) over {args.loads} loads"
    )
    figure(
        f"runner model load, {args.model_mb} MB model",
        median(loads),
        "ms",
        budget=100 if args.model_mb <= 10 else None,
        note=f"median of {args.loads}",
        settings={"model": f"{args.model_mb} MB"},
    )

    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    session = model.load(tiny, "tiny", "", None, threads=1).session
    direct = _timed(lambda: session.run(None, {"x": x}), args.calls)
    starts = []
    with Runner(_config(work, tiny)) as runner:
        inputs = {"x": x.tolist()}
        api = _timed(lambda: runner.predict(inputs), args.calls)
        idle_tiny = _rss_mb(runner.pid or 0)
    overhead = median(api) - median(direct)
    print(
        f"per call, tiny model: Runner.predict median {median(api) * 1000:.0f} us "
        f"(p99 {sorted(api)[int(len(api) * 0.99)] * 1000:.0f} us), session.run median "
        f"{median(direct) * 1000:.0f} us: overhead {overhead * 1000:.0f} us "
        f"over {args.calls} calls each"
    )
    figure(
        "runner per-call overhead over session.run",
        overhead * 1000,
        "us",
        budget=1000,
        note=f"medians of {args.calls} calls each",
        settings={"model": "tiny"},
    )
    for _ in range(3):
        t = time.perf_counter()
        with Runner(_config(work, big)) as runner:
            starts.append((time.perf_counter() - t) * 1000)
            time.sleep(0.5)
            idle_big = _rss_mb(runner.pid or 0)
    print(
        f"Runner.start to /health answered, {args.model_mb} MB model: median "
        f"{median(starts):.0f} ms (Python and onnxruntime import included)"
    )
    print(
        f"runner RSS idle: {idle_tiny:.1f} MB with the tiny model, "
        f"{idle_big:.1f} MB with the {args.model_mb} MB model"
    )
    figure("runner RSS idle, tiny model", idle_tiny, "MB", settings={"model": "tiny"})
    figure(
        f"runner RSS idle, {args.model_mb} MB model",
        idle_big,
        "MB",
        settings={"model": f"{args.model_mb} MB"},
    )


if __name__ == "__main__":
    main()
