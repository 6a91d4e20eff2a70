"""Enrolments per second with real CSRs on one controller (SQLite, or PostgreSQL with
``--database-url``), load from wrk over HTTPS with keep-alive.

    python bench/enrol.py [--database-url postgresql://postgres@127.0.0.1:5432/test] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import database, figure, median_of
from harness import make_csr, median, run_wrk, start_controller


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    ctl = start_controller(args.database_url)
    try:
        with ctl.client() as c:
            c.post("/sites", json={"name": "bench"}).raise_for_status()
            token = c.post("/tokens", json={"site": "bench", "expires_in_seconds": 86400})
            token.raise_for_status()
            secret = token.json()["token"]
        needed = 1500 * args.seconds  # more than the controller can take: no body repeats
        results = []
        for run in range(args.runs):
            bodies = Path(tempfile.mkstemp(suffix=".jsonl")[1])
            with bodies.open("w") as f:
                for i in range(needed):
                    _key, csr = make_csr()
                    inv = {"serial": f"r{run}-{i}", "hardware_id": f"hw-{run}-{i}"}
                    f.write(json.dumps({"token": secret, "csr": csr, "inventory": inv}) + "\n")
            os.environ["WRK_BODIES"], os.environ["WRK_THREADS"] = str(bodies), str(args.threads)
            r = run_wrk(
                ctl.url,
                Path(__file__).with_name("enrol.lua"),
                args.threads,
                args.connections,
                args.seconds,
            )
            if r.requests > needed:
                raise SystemExit("wrk ran out of distinct CSRs; raise `needed`")
            results.append(r)
            print(
                f"run {run + 1}: {r.requests_per_s:.0f} enrolments/s, p50 {r.p50_ms:.1f} ms, "
                f"p99 {r.p99_ms:.1f} ms, non-2xx {r.non_2xx}, wrk CPU "
                f"{r.cpu_seconds / r.duration_s * 100:.0f}% of a core"
            )
        with ctl.client() as c:
            metrics = c.get(ctl.url + "/metrics").text
        devices = sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("edgefleet_devices{")
        )
        total = sum(r.requests - r.non_2xx for r in results)
        db = "PostgreSQL" if args.database_url else "SQLite"
        print(
            f"enrol ({db}): median {median([r.requests_per_s for r in results]):.0f}/s, "
            f"median p99 {median([r.p99_ms for r in results]):.1f} ms over {args.runs} runs; "
            f"{total} successful enrolments, {devices:.0f} devices stored"
        )
        settings = {
            "database": database(args.database_url),
            "controller workers": os.cpu_count(),
            "wrk": f"{args.threads} threads, {args.connections} connections, {args.seconds} s",
        }
        figure(
            f"enrolments/s, real CSRs ({db})",
            median([r.requests_per_s for r in results]),
            "/s",
            budget=500,
            better="higher",
            note=median_of(args.runs),
            settings=settings,
        )
        figure(
            f"enrolment p99 ({db})",
            median([r.p99_ms for r in results]),
            "ms",
            budget=None if args.database_url else 200,
            note=median_of(args.runs),
            settings=settings,
        )
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
