"""Two replicas against one: ``GET desired`` answered 304, each replica one worker pinned
to one core of its own (``taskset``), on one PostgreSQL.

    python bench/replica_scaling.py [--database-url postgresql://...] [--devices 1000]
        [--seconds 10] [--runs 3] [--connections 32]

First replica A alone on core 0, with wrk on core 1; then A on core 0 and B (a copy of
A's identity, the same database) on core 1, each played by its own wrk, the two wrk
processes unpinned and sharing the cores with the replicas (the machine has no third).
The figure is the two replicas' throughput together over A's alone (budget 1.5x), beside
the load generator's CPU. The guarantees are checked on the same fleet: every device
listed once by both replicas, and one rollout driver (both name the same lease holder).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from desired import wrk_devices
from figures import figure, median_of
from harness import NOT_MODIFIED_MAX, WrkResult, median, pinned, run_wrk, start_controller
from replicas import listed, schema_url, start_replica

LUA = Path(__file__).with_name("desired.lua")


def _together(urls: list[str], connections: int, seconds: int) -> list[WrkResult]:
    """One wrk per replica at once, each with its own share of the devices' requests."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--wrk-only", url, str(connections), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"wrk failed: {out}")
        results.append(WrkResult(*[float(x) for x in out.split()]))  # type: ignore[arg-type]
    return results


def _wrk_only(url: str, connections: int, seconds: int) -> None:
    """A child of :func:`_together`: one wrk run, its figures on one line."""
    r = run_wrk(url, LUA, 1, connections, seconds)
    print(
        r.requests_per_s, r.p50_ms, r.p99_ms, r.non_2xx, r.requests, r.cpu_seconds, seconds,
        r.bytes_read,
    )  # fmt: skip


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--wrk-only":
        _wrk_only(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    args = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one per replica")

    a = start_controller(args.database_url, workers=1, cpus="0")
    b = None
    try:
        devices = wrk_devices(a, args.devices)
        os.environ["WRK_DEVICES"], os.environ["WRK_THREADS"] = str(devices), "1"
        wrk_on_1 = [*pinned("1"), sys.executable, __file__, "--wrk-only", a.url]
        one = []
        for _ in range(args.runs):
            done = subprocess.run(
                [*wrk_on_1, str(args.connections), str(args.seconds)],
                capture_output=True,
                text=True,
                check=True,
            )
            one.append(WrkResult(*[float(x) for x in done.stdout.split()]))  # type: ignore[arg-type]
        b = start_replica(a, schema_url(a), workers=1, cpus="1")
        _together([a.url, b.url], args.connections, 3)  # B loads its caches
        two = [_together([a.url, b.url], args.connections, args.seconds) for _ in range(args.runs)]

        with a.client() as ca, b.client() as cb:
            holders = {c.get("/rollouts/engine").json().get("holder") for c in (ca, cb)}
        seen_a, seen_b = listed(a), listed(b)
    finally:
        if b is not None:
            b.stop()
        a.stop()

    alone = median([r.requests_per_s for r in one])
    both = median([sum(r.requests_per_s for r in pair) for pair in two])
    runs = [*one, *(r for pair in two for r in pair)]
    bad = sum(r.non_2xx for r in runs)
    per_request = max(r.bytes_per_request() for r in runs)
    wrk_cpu = median([sum(r.cpu_seconds for r in pair) / args.seconds for pair in two])
    p99 = median([max(r.p99_ms for r in pair) for pair in two])
    print(
        f"one replica (1 worker, core 0; wrk on core 1): {alone:.0f} req/s; two replicas "
        f"(core 0 and core 1; two wrk sharing them): {both:.0f} req/s together, p99 "
        f"{p99:.2f} ms, {both / alone:.2f}x; wrk CPU {wrk_cpu * 100:.0f}% of a core; "
        f"non-2xx/3xx answers {bad}, at most {per_request:.0f} bytes read per request; "
        f"devices listed by A {len(seen_a)}, by B {len(seen_b)}, "
        f"the same: {seen_a == seen_b}; rollout lease holders named: {len(holders)}"
    )
    broken = bad or per_request > NOT_MODIFIED_MAX or len(holders) != 1
    if broken or seen_a != seen_b or len(seen_a) != args.devices:
        raise SystemExit("a guarantee did not hold")
    settings = {
        "database": "PostgreSQL",
        "replicas": "1 worker each, pinned to a core",
        "devices": args.devices,
        "wrk": f"1 thread, {args.connections} connections per replica, {args.seconds} s",
    }
    note = median_of(args.runs) + f"; {alone:.0f}/s alone, {both:.0f}/s together"
    figure("two replicas over one, GET desired 304", both / alone, "x", budget=1.5,
           better="higher", note=note, settings=settings)  # fmt: skip
    figure("two replicas: the load generator's CPU", wrk_cpu * 100, "% of a core",
           note="two wrk processes on the replicas' cores", settings=settings)  # fmt: skip


if __name__ == "__main__":
    main()
