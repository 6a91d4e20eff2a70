"""``GET desired`` answered 304 over HTTPS with keep-alive, at 1,000 simulated devices.

Each device is really enrolled (real CSR) and holds a real access token; wrk plays
all of them, each request with that device's token and ETag.

    python bench/desired.py [--devices 1000] [--runs 3] [--database-url ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import database, figure, median_of
from harness import (
    NOT_MODIFIED_MAX,
    RunningController,
    make_csr,
    median,
    run_wrk,
    start_controller,
)

from edgefleet.signing import make_assertion


def wrk_devices(ctl: RunningController, count: int) -> Path:
    """Enrol ``count`` devices, each with its access token and its ETag, into the file
    ``desired.lua`` plays (``WRK_DEVICES``): a line of id, token and ETag per device."""
    lines = []
    with ctl.client() as c:
        c.post("/sites", json={"name": "bench"}).raise_for_status()
        c.post("/profiles", json={"name": "p", "spec": {"config": {"x": 1}}}).raise_for_status()
        token = c.post("/tokens", json={"site": "bench", "profile": "p"}).json()["token"]
        controller_id = c.get("/controller").json()["controller_id"]
        for i in range(count):
            key, csr = make_csr()
            r = c.post("/enrol", json={"token": token, "csr": csr, "inventory": {"serial": str(i)}})
            r.raise_for_status()
            did = r.json()["device_id"]
            assertion = make_assertion(key, did, controller_id)
            access = c.post("/auth/token", json={"client_assertion": assertion}).json()
            bearer = {"authorization": f"Bearer {access['access_token']}"}
            etag = c.get(f"/devices/{did}/desired", headers=bearer).headers["etag"]
            lines.append(f"{did} {access['access_token']} {etag}")
    devices = Path(tempfile.mkstemp(suffix=".txt")[1])
    devices.write_text("\n".join(lines) + "\n")
    return devices


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, help="controller workers (default: its own)")
    args = p.parse_args()

    ctl = start_controller(args.database_url, workers=args.workers)
    try:
        devices = wrk_devices(ctl, args.devices)
        os.environ["WRK_DEVICES"], os.environ["WRK_THREADS"] = str(devices), str(args.threads)
        # Warm up: every worker loads each device's credentials and ETag once.
        run_wrk(ctl.url, Path(__file__).with_name("desired.lua"), args.threads, args.connections, 3)
        results = []
        for run in range(args.runs):
            r = run_wrk(
                ctl.url,
                Path(__file__).with_name("desired.lua"),
                args.threads,
                args.connections,
                args.seconds,
            )
            results.append(r)
            print(
                f"run {run + 1}: {r.requests_per_s:.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                f"p99 {r.p99_ms:.2f} ms, non-2xx/3xx {r.non_2xx}, wrk CPU "
                f"{r.cpu_seconds / r.duration_s * 100:.0f}% of a core, "
                f"{r.bytes_per_request():.0f} bytes read per request"
            )
            if r.non_2xx or r.bytes_per_request() > NOT_MODIFIED_MAX:
                raise SystemExit("answers other than 304 came back: check the ETags")
        print(
            f"desired 304 ({args.devices} devices, {args.connections} connections): median "
            f"{median([r.requests_per_s for r in results]):.0f} req/s, median p99 "
            f"{median([r.p99_ms for r in results]):.2f} ms, wrk CPU median "
            f"{median([r.cpu_seconds / r.duration_s for r in results]) * 100:.0f}% of a core"
        )
        db = database(args.database_url)
        settings = {
            "database": db,
            "controller workers": args.workers or os.cpu_count(),
            "devices": args.devices,
            "wrk": f"{args.threads} threads, {args.connections} connections, {args.seconds} s",
        }
        target = "with wrk on the same 2 cores; the budget was 5,000/s, p99 25 ms before"
        figure(
            f"GET desired 304/s ({db})",
            median([r.requests_per_s for r in results]),
            "/s",
            budget=10_000,
            better="higher",
            note=median_of(args.runs) + f"; {target}",
            settings=settings,
        )
        figure(
            f"GET desired 304 p99 ({db})",
            median([r.p99_ms for r in results]),
            "ms",
            budget=20,
            note=median_of(args.runs) + f"; {target}",
            settings=settings,
        )
        figure(
            f"GET desired: wrk CPU ({db})",
            median([r.cpu_seconds / r.duration_s for r in results]) * 100,
            "% of a core",
            note="the load generator's share of this machine",
            settings=settings,
        )
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
