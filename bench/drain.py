"""Draining a 48 h backlog: 345,600 results (2 a second for 48 hours) from an agent's
buffer to a controller on loopback, and the agent's memory while it drains.

    python bench/drain.py [--records 345600] [--runs 3] [--database-url postgresql://...]

Each run fills a new device's buffer (not timed; the runner's record shape, about 300
bytes of JSON), starts ``edgefleet agent run`` on it and times spawn to the moment the
controller's ``edgefleet_results_stored_total`` has grown by every record. The agent's
VmRSS is sampled every 100 ms meanwhile. Buffers use ``synchronous=FULL``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import database, figure, median_of
from harness import median, spawn_agent, start_controller

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgefleet.agent.buffer import Buffer, Record

BACKLOG = 345_600  # 2 a second for 48 hours
DIGEST = "sha256:" + hashlib.sha256(b"model").hexdigest()
STORED = re.compile(rb"^edgefleet_results_stored_total (\S+)$", re.M)


def fill(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True)
    with Buffer(path) as buf:
        for start in range(0, count, 5000):
            batch: list[Record] = [
                {
                    "payload": {
                        "ts": 1_780_000_000 + i / 2,
                        "model": {"name": "detector", "version": "1.4", "digest": DIGEST},
                        "inputs_sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                        "outputs": {"scores": [[0.91, 0.05, 0.04]]},
                        "latency_ms": 3.2,
                    },
                    "digest": DIGEST,
                    "slot": "A",
                    "revision": 3,
                }
                for i in range(start, min(start + 5000, count))
            ]
            buf.append_many(batch)


def stored(metrics: bytes) -> int:
    found = STORED.search(metrics)
    return int(float(found.group(1))) if found else 0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=BACKLOG)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--database-url")
    args = p.parse_args()
    ctl = start_controller(database_url=args.database_url)
    work = Path(tempfile.mkdtemp(prefix="ef-drain-bench-"))
    db = "PostgreSQL" if args.database_url else "SQLite"
    times, peaks = [], []
    try:
        with ctl.client() as c:
            c.post("/sites", json={"name": "bench"}).raise_for_status()
            r = c.post("/tokens", json={"site": "bench", "max_uses": args.runs})
            r.raise_for_status()
            reg = work / "registration.yaml"
            reg.write_text(yaml.safe_dump(r.json()["registration"]))
            for run in range(args.runs):
                state = work / f"device-{run}"
                fill(state / "results" / "results.db", args.records)
                before = stored(c.get(ctl.url + "/metrics").content)
                t0 = time.perf_counter()
                proc = spawn_agent(reg, state, f"drain-{run}")
                peak = 0.0
                last_poll = 0.0
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"the agent exited with {proc.returncode}")
                    peak = max(peak, rss_mb(proc.pid))
                    if time.perf_counter() - last_poll > 0.5:
                        last_poll = time.perf_counter()
                        done = stored(c.get(ctl.url + "/metrics").content) - before
                        if done >= args.records:
                            break
                    if time.perf_counter() - t0 > 600:
                        raise SystemExit("not drained in 10 minutes")
                    time.sleep(0.1)
                elapsed = time.perf_counter() - t0
                proc.terminate()
                proc.wait(10)
                times.append(elapsed)
                peaks.append(peak)
                print(
                    f"  run {run + 1}: {elapsed:.1f} s ({args.records / elapsed:,.0f} results/s), "
                    f"agent peak VmRSS {peak:.1f} MB",
                    flush=True,
                )
        print(
            f"drain {args.records:,} results to a controller on {db}: median "
            f"{median(times):.1f} s (min {min(times):.1f}, max {max(times):.1f}) over "
            f"{len(times)} runs, {args.records / median(times):,.0f} results/s; agent peak "
            f"VmRSS median {median(peaks):.1f} MB (max {max(peaks):.1f}); synchronous=FULL "
            "on the agent"
        )
        settings = {
            "database": database(args.database_url),
            "controller workers": os.environ.get("EDGEFLEET_WORKERS") or os.cpu_count(),
            "agent buffer": "WAL, synchronous=FULL",
            "records": args.records,
        }
        full = args.records == BACKLOG
        figure(
            f"drain {args.records:,} results to the controller ({db})",
            median(times),
            "s",
            budget=60 * args.records / BACKLOG,
            note=f"{median_of(len(times))}, {args.records / median(times):,.0f} results/s"
            + ("" if full else f"; budget scaled from 60 s for {BACKLOG:,} (48 h)"),
            settings=settings,
        )
        figure(
            f"agent peak RSS while draining ({db})",
            max(peaks),
            "MB",
            budget=60,
            note=f"VmRSS sampled every 100 ms, the highest of {len(peaks)} run(s)",
            settings=settings,
        )
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
