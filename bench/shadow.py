"""Shadow comparison budgets (issue 14): what a candidate in shadow costs the answered
call, the CPU it takes per inference, the runner restart gap when a plan arrives, and
the bytes of three models' agreement windows in a status report.

    python bench/shadow.py [--runs 5] [--calls 400] [--pad-mb 4] [--restarts 3]

Latency: two real runner processes (Unix socket, HTTP keep-alive, real onnxruntime) on
the same model, one alone and one with a candidate (other weights, same size) in shadow
at sample rate 1.0; calls of one row are interleaved so both meet the same machine. The
added latency is the median with the shadow minus the median without, per run; the
figure is the median over ``--runs``. ``--pad-mb`` makes the model do real work per
call (it sums that many MB of weights), so the candidate competes for the CPU. The
result stores live on tmpfs (``/dev/shm``) when there is one, so their fsync per call
does not drown the difference in the disk's noise.

CPU and memory: the two runner processes' user+system time over the same calls and
their resident memory (``/proc``): the difference per call is what the candidate's run
and the comparison cost; the difference in memory is the candidate's.

Switch: ``ModelServing.set_shadow`` with a plan (a new runner with the candidate takes
the main socket over, the old one is stopped), and without it again: the time the switch
took, and the longest time a client calling the socket in a loop went without an answer
(median over the changes), with the calls that failed.

Wire: a ``StatusReport`` carrying three models' closed windows with five-digit counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure
from harness import median

from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
from edgefleet.agent.update.modelset import StagedModel, stage
from edgefleet.agent.update.switch import ModelServing, ShadowSpec
from edgefleet.errors import EdgefleetError
from edgefleet.oci import digest as dg
from edgefleet.wire import ShadowWindow, StatusReport
from tests.support.onnxmodels import affine

FEATURES, CLASSES = 32, 10
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--calls", type=int, default=400, help="calls per runner per run")
    p.add_argument("--pad-mb", type=float, default=4.0)
    p.add_argument("--restarts", type=int, default=3)
    args = p.parse_args()
    # tmpfs where there is one: the result store's fsync per call (bench/buffer.py) would
    # drown the microseconds measured here in the disk's noise
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="efb-", dir=shm if shm.is_dir() else "/tmp") as tmp:
        work = Path(tmp)
        pad = int(args.pad_mb * 1e6)
        active = affine(work / "active.onnx", FEATURES, CLASSES, seed=1, pad_bytes=pad)
        candidate = affine(work / "candidate.onnx", FEATURES, CLASSES, seed=2, pad_bytes=pad)
        _latency(work, active, candidate, args)
        _restart_gap(work, active, candidate, args.restarts)
    _wire()


def _cpu_s(pid: int | None) -> float:
    assert pid is not None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime


def _latency(work: Path, active: Path, candidate: Path, args: argparse.Namespace) -> None:
    common = {"model": active, "name": "m", "start_timeout": 60.0}
    alone = Runner(RunnerConfig(socket=work / "a.sock", results=work / "ra", **common))
    shadowed = Runner(
        RunnerConfig(
            socket=work / "s.sock",
            results=work / "rs",
            shadow_model=candidate,
            shadow_key="bench",
            shadow_window=3600,
            **common,
        )
    )
    rows = np.random.default_rng(0).normal(size=(args.calls + 50, FEATURES)).astype(np.float32)
    bodies = [{"x": [r.tolist()]} for r in rows]
    added, cpu, medians = [], [], []
    with alone, shadowed:
        deadline = time.monotonic() + 60
        while not shadowed.health().get("shadow", {}).get("running"):
            if time.monotonic() > deadline:
                raise SystemExit("the candidate did not load within 60 s")
            time.sleep(0.05)
        for _ in range(args.runs):
            times: dict[str, list[float]] = {"alone": [], "shadow": []}
            before = {n: _cpu_s(r.pid) for n, r in (("alone", alone), ("shadow", shadowed))}
            for i, body in enumerate(bodies):
                for name, runner in (("alone", alone), ("shadow", shadowed)):
                    t = time.perf_counter()
                    runner.predict(body)
                    if i >= 50:
                        times[name].append((time.perf_counter() - t) * 1000)
            # the candidate's queue drains before the CPU is read
            time.sleep(0.3)
            after = {n: _cpu_s(r.pid) for n, r in (("alone", alone), ("shadow", shadowed))}
            a, s = median(times["alone"]), median(times["shadow"])
            medians.append((a, s))
            added.append(s - a)
            extra = (after["shadow"] - before["shadow"]) - (after["alone"] - before["alone"])
            cpu.append(extra / len(bodies) * 1000)
        health = shadowed.health()["shadow"]
        rss = {n: _rss_mb(r.pid) for n, r in (("alone", alone), ("shadow", shadowed))}
    a, s = median([m[0] for m in medians]), median([m[1] for m in medians])
    print(
        f"answered call (1 row, {FEATURES} features, {CLASSES} classes, {args.pad_mb:g} MB "
        f"of weights, Unix socket): median {a:.3f} ms alone, {s:.3f} ms with a shadow at "
        f"sample rate 1.0: {median(added) * 1000:.0f} us added (median of {args.runs} runs "
        f"of {args.calls} interleaved calls; per run: "
        f"{', '.join(f'{x * 1000:.0f}' for x in added)} us); the candidate compared "
        f"{health['compared']} rows, skipped {health['skipped']}, errors {health['errors']}"
    )
    figure(
        "shadow added to the answered call's latency",
        median(added) * 1000,
        "us",
        note=f"median with minus median without, {args.calls} interleaved calls, "
        f"median of {args.runs} runs, sample rate 1.0",
        settings={"pad_mb": args.pad_mb, "features": FEATURES, "classes": CLASSES},
    )
    print(
        f"candidate CPU per sampled inference (its run and the comparison): "
        f"{median(cpu):.3f} ms (per run: {', '.join(f'{c:.3f}' for c in cpu)}; the clock "
        f"ticks every {TICK_S * 1000:.0f} ms)"
    )
    print(
        f"runner resident memory: {rss['alone']:.1f} MB alone, {rss['shadow']:.1f} MB with "
        f"the candidate ({rss['shadow'] - rss['alone']:.1f} MB for a {args.pad_mb:g} MB model)"
    )
    figure(
        "runner memory added by a shadow candidate",
        rss["shadow"] - rss["alone"],
        "MB",
        note=f"VmRSS with the candidate minus without, {args.pad_mb:g} MB of weights",
        settings={"pad_mb": args.pad_mb},
    )
    figure(
        "shadow candidate CPU per inference",
        median(cpu),
        "ms",
        note="runner CPU with the shadow minus without, per call, sample rate 1.0",
        settings={"pad_mb": args.pad_mb},
    )


def _rss_mb(pid: int | None) -> float:
    assert pid is not None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _restart_gap(work: Path, active: Path, candidate: Path, restarts: int) -> None:
    folder = work / "slot"
    stage([StagedModel(name="m", path=active, digest=dg.of_file(active))], 1, folder)
    serving = ModelServing(work / "sockets", work / "results", work / "check-results")
    spec = ShadowSpec(
        key="bench",
        model=candidate,
        digest=dg.of_file(candidate),
        reference="",
        window_seconds=3600,
    )
    took, seen, failed = [], [], 0
    try:
        serving.serve(folder, "A")
        for _ in range(restarts):
            for plan in ({"m": spec}, {}):
                longest, errors = _client_gap(
                    serving, lambda p=plan: took.append(serving.set_shadow(p))
                )
                seen.append(longest)
                failed += errors
    finally:
        serving.close()
    print(
        f"runner switch when a plan arrives or goes (a takeover of the socket): median "
        f"{median(took) * 1000:.0f} ms ({len(took)} changes: "
        f"{', '.join(f'{g * 1000:.0f}' for g in took)} ms); a client calling in a loop saw "
        f"at most {max(seen) * 1000:.1f} ms between two answers (median "
        f"{median(seen) * 1000:.1f} ms) and {failed} failed calls"
    )
    figure(
        "caller's longest wait while a shadow plan arrives or goes",
        median(seen) * 1000,
        "ms",
        note=f"a client calling the main socket in a loop, median of {len(seen)} changes; "
        f"{failed} calls failed; the switch itself took {median(took) * 1000:.0f} ms",
        settings={"changes": len(seen)},
    )


def _client_gap(serving: ModelServing, change: object) -> tuple[float, int]:
    """The longest time a caller looping on the main socket went without an answer
    while ``change`` ran, and the calls that failed."""
    stop = threading.Event()
    longest, errors = [0.0], [0]

    def call() -> None:
        client = RunnerClient(serving.main["m"].config.socket, 5.0)  # the socket, not a child
        last = time.monotonic()
        x = {"x": [[0.0] * FEATURES]}
        while not stop.is_set():
            try:
                client.predict(x)
                now = time.monotonic()
                longest[0] = max(longest[0], now - last)
                last = now
            except EdgefleetError:
                errors[0] += 1
                time.sleep(0.001)
        client.close()

    t = threading.Thread(target=call, daemon=True)
    t.start()
    time.sleep(0.2)
    change()  # type: ignore[operator]
    time.sleep(0.5)
    stop.set()
    t.join()
    return longest[0], errors[0]


def _wire() -> None:
    windows = []
    for i, name in enumerate(("classifier", "detector", "regressor")):
        compared = 36_000 + 1_234 * i
        windows.append(
            ShadowWindow(
                key="rollout-1234" if i < 2 else "parent",
                model=name,
                active_digest=dg.of_bytes(name.encode()),
                candidate_digest=dg.of_bytes(name.encode() * 2),
                start=1_796_000_400,
                seconds=300,
                compared=compared,
                skipped=17 * i,
                errors=i,
                top1_total=compared if i < 2 else 0,
                top1_agree=compared - 421 * (i + 1) if i < 2 else 0,
                abs_diff_sum=compared * 0.0123456789,
                abs_diff_max=0.987654321,
                active_latency={"p50_ms": 1.234, "p95_ms": 3.456},
                candidate_latency={"p50_ms": 0.789, "p95_ms": 2.345},
            )
        )
    payload = len(StatusReport(applied_revision=12, shadow=windows).model_dump_json())
    bare = len(StatusReport(applied_revision=12).model_dump_json())
    print(
        f"status report with 3 models' shadow windows: {payload} bytes, {bare} without them "
        f"({(payload - bare) / 3:.0f} bytes a window)"
    )
    figure(
        "status report with shadow windows, 3 models",
        payload / 1024,
        "KB",
        budget=8,
        note="the agent's JSON, one closed window per model",
        settings={"models": 3},
    )


if __name__ == "__main__":
    main()
