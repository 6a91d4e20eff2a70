"""The fleet simulator against a fresh controller: devices at an interval for a while,
then requests/s, p99 by endpoint, the controller's RSS at start and end and its CPU,
and the simulator's own CPU (both share this machine's cores).

    python bench/simulate.py [--devices 2000] [--interval 30] [--duration 60]
        [--workers N] [--database-url postgresql://...] [--connections 64] [--keep DIR]

The controller's per-address enrolment and token rate limits are off (as in every
benchmark: one simulator is one address); ``edgefleet simulate`` is run as a user
runs it, in its own process, and its JSON report is read back.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure
from harness import run_simulator

P99_MS = 50.0
"""The soak's budget: the p99 of every device request after warm-up."""
RSS_GROWTH = 0.05
"""The controller's RSS is flat after warm-up when it grows by at most this share."""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--interval", type=float, default=30)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--workers", type=int)
    p.add_argument("--database-url")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--enrol-concurrency", type=int, default=32)
    p.add_argument("--uploading", type=float, default=0.0)
    p.add_argument("--warmup", type=float, help="Seconds after enrolment before steady state")
    p.add_argument("--keep", type=Path, help="Write report.json and chart.png here")
    args = p.parse_args()

    out = args.keep or Path(tempfile.mkdtemp(prefix="ef-sim-"))
    flags = [
        *("--devices", str(args.devices), "--interval", str(args.interval)),
        *("--duration", str(args.duration), "--connections", str(args.connections)),
        *("--enrol-concurrency", str(args.enrol_concurrency)),
        *("--uploading", str(args.uploading), "--bucket", "5"),
        *(("--warmup", str(args.warmup)) if args.warmup is not None else ()),
    ]
    run = run_simulator(flags, out, args.database_url, args.workers, "bench")
    doc, wall = run.report, run.wall_s
    print(run.stdout, end="")
    c, lat = doc["controller"] or {}, doc["latency"]
    db = "PostgreSQL" if args.database_url else "SQLite"
    workers = args.workers or "default"
    print(
        f"simulate ({db}, controller workers {workers}): {doc['devices']['enrolled']} devices "
        f"at {args.interval:g} s for {args.duration:g} s: {doc['requests_per_second']} req/s, "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, {doc['error_count']} errors, "
        f"{doc['shed']} shed; enrolment {doc['enrol_seconds']:.1f} s "
        f"({doc['endpoints']['POST /enrol']['per_second']}/s, "
        f"p99 {doc['endpoints']['POST /enrol']['p99_ms']} ms); controller RSS "
        f"{c.get('rss_start_mb')} -> {c.get('rss_end_mb')} MB, CPU {c.get('cpu_seconds')} s; "
        f"simulator CPU {doc['simulator_cpu_seconds']} s over {wall:.0f} s wall, "
        f"max RSS {doc['simulator_max_rss_mb']} MB "
        f"({doc['simulator_cpu_seconds'] / wall * 100:.0f}% of a core); report in {out}"
    )
    st = doc["steady"]
    settings = {
        "database": db,
        "workers": workers,
        "devices": args.devices,
        "interval_s": args.interval,
        "duration_s": args.duration,
        "connections": args.connections,
    }
    fleet = f"{args.devices:,} devices at {args.interval:g} s"
    figure(
        f"simulate {fleet}: requests/s after warm-up",
        st["per_second"] or 0,
        "req/s",
        better="higher",
        settings=settings,
    )
    if st["requests"]:
        figure(
            f"simulate {fleet}: p99 after warm-up",
            st["p99_ms"],
            "ms",
            budget=P99_MS,
            note=f"{st['from_s']:.0f}-{st['to_s']:.0f} s of the run",
            settings=settings,
        )
    figure(
        f"simulate {fleet}: failed requests",
        doc["error_count"],
        "requests",
        budget=0,
        note=f"{doc['shed']} shed (429/503, retried)",
        settings=settings,
    )
    ctl = st["controller"]
    if ctl["rss_start_mb"]:
        growth = ctl["rss_end_mb"] / ctl["rss_start_mb"] - 1
        figure(
            f"simulate {fleet}: controller RSS growth after warm-up",
            growth * 100,
            "%",
            budget=RSS_GROWTH * 100,
            note=f"{ctl['rss_start_mb']:.0f} -> {ctl['rss_end_mb']:.0f} MB",
            settings=settings,
        )
    figure(
        f"simulate {fleet}: simulator CPU",
        doc["simulator_cpu_seconds"] / wall * 100,
        "% of a core",
        note="on the controller's machine",
        settings=settings,
    )
    if run.returncode:
        raise SystemExit(run.returncode)


if __name__ == "__main__":
    main()
