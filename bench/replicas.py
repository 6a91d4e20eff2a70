"""Two controller replicas on one PostgreSQL, sharing this machine and one identity
(PKI, access-token key, controller id: replica B's data directory is a copy of A's).

(a) Enrolments with approval off, load split across both replicas by two wrk
    processes (one per replica, each with its own CSRs); then no duplicate device in
    the database, and every enrolment listed by both replicas' APIs.
(b) Decommission seen by every replica: for each of ``--devices`` devices whose
    ``GET desired`` B answers 304 from memory, the time from the decommission call
    returning on A until B refuses the device's access token (B polled tightly over
    several connections, so over both of its workers).

    python bench/replicas.py [--database-url postgresql://postgres@127.0.0.1:5432/test]
        [--workers N] [--runs 3] [--seconds 10] [--devices 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure, median_of
from harness import (
    EDGEFLEET,
    RunningController,
    WrkResult,
    free_port,
    make_csr,
    median,
    pinned,
    start_controller,
)

from edgefleet.signing import make_assertion

ENROL_LUA = Path(__file__).with_name("enrol.lua")


def start_replica(
    first: RunningController, database_url: str, workers: int | None, cpus: str | None = None
) -> RunningController:
    """A second replica: a copy of the first one's identity, the same database; ``cpus``
    pins it (``taskset -c``)."""
    data = Path(tempfile.mkdtemp(prefix="ef-bench-replica-"))
    shutil.copytree(first.data_dir / "pki", data / "pki")
    for name in ("access-token.key", "controller-id"):
        shutil.copy2(first.data_dir / name, data / name)
    port = free_port()
    env = dict(os.environ)
    env.update(
        EDGEFLEET_DATA_DIR=str(data),
        EDGEFLEET_PORT=str(port),
        EDGEFLEET_LOG_LEVEL="warning",
        EDGEFLEET_DATABASE_URL=database_url,
    )
    env.setdefault("EDGEFLEET_ENROL_RATE_PER_SECOND", "0")
    env.setdefault("EDGEFLEET_TOKEN_RATE_PER_SECOND", "0")
    if workers:
        env["EDGEFLEET_WORKERS"] = str(workers)
    log = open(data / "controller.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [*pinned(cpus), *EDGEFLEET, "controller", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    replica = RunningController(f"https://127.0.0.1:{port}", data, first.admin_token, proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((data / "controller.log").read_text())
        try:
            with replica.client() as c:
                if c.get(replica.url + "/readyz").status_code == 200:
                    return replica
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("replica did not become ready in 60 s")


def schema_url(ctl: RunningController) -> str:
    """The database URL (with its fresh schema) the first replica was started on."""
    settings = json.loads((ctl.data_dir / "run" / "settings.json").read_text())
    return str(settings["database_url"])


def wrk(url: str, bodies: Path, threads: int, connections: int, seconds: int) -> WrkResult:
    env = dict(os.environ, WRK_BODIES=str(bodies), WRK_THREADS=str(threads))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    out = subprocess.run(
        [*cmd, "-s", str(ENROL_LUA), url], env=env, capture_output=True, text=True, check=True
    ).stdout

    def ms(pattern: str) -> float:
        value, unit = re.search(pattern, out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        ms(r"^\s+50%\s+([\d.]+)(us|ms|s|m)"),
        ms(r"^\s+99%\s+([\d.]+)(us|ms|s|m)"),
        int(bad.group(1)) if bad else 0,
        int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        0.0,
        seconds,
    )


def write_bodies(token: str, tag: str, n: int) -> Path:
    bodies = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    with bodies.open("w") as f:
        for i in range(n):
            _key, csr = make_csr()
            inv = {"serial": f"{tag}-{i}", "hardware_id": f"hw-{tag}-{i}"}
            f.write(json.dumps({"token": token, "csr": csr, "inventory": inv}) + "\n")
    return bodies


def listed(ctl: RunningController) -> set[str]:
    ids: set[str] = set()
    with ctl.client() as c:
        while True:
            page = c.get("/devices", params={"limit": 10000, "offset": len(ids)}).json()
            ids.update(d["id"] for d in page)
            if len(page) < 10000:
                return ids


def enrolments(
    a: RunningController, b: RunningController, url: str, args: argparse.Namespace
) -> None:
    with a.client() as c:
        token = c.post("/tokens", json={"site": "bench", "expires_in_seconds": 86400})
        token.raise_for_status()
        secret = token.json()["token"]
    per_replica = 1000 * args.seconds  # more than one replica can take: no body repeats
    totals = []
    for run in range(args.runs):
        files = [write_bodies(secret, f"r{run}{side}", per_replica) for side in "ab"]
        with ThreadPoolExecutor(2) as pool:  # both at once, one wrk per replica
            futures = [
                pool.submit(wrk, ctl.url, f, args.threads, args.connections, args.seconds)
                for ctl, f in ((a, files[0]), (b, files[1]))
            ]
            ra, rb = (f.result() for f in futures)
        if max(ra.requests, rb.requests) > per_replica:
            raise SystemExit("wrk ran out of distinct CSRs; raise `per_replica`")
        total = ra.requests_per_s + rb.requests_per_s
        totals.append(total)
        print(
            f"run {run + 1}: {total:.0f} enrolments/s together (A {ra.requests_per_s:.0f}/s "
            f"p99 {ra.p99_ms:.0f} ms, B {rb.requests_per_s:.0f}/s p99 {rb.p99_ms:.0f} ms), "
            f"non-2xx {ra.non_2xx + rb.non_2xx}"
        )
        for f in files:
            f.unlink()
    # Requests wrk left queued in the replicas finish after it stops: wait for quiet.
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        count = "SELECT count(*), count(DISTINCT key_pin), count(DISTINCT serial) FROM device"
        before = None
        while (now := conn.execute(count).fetchone()) != before:
            before = now
            time.sleep(1)
        n, pins, serials = now  # type: ignore[misc]
    on_a, on_b = listed(a), listed(b)
    print(
        f"enrol over 2 replicas (PostgreSQL): median {median(totals):.0f}/s over {args.runs} "
        f"runs; {n} devices stored, {n - serials} duplicate serials, {n - pins} duplicate "
        f"keys; listed by A: {len(on_a)}, by B: {len(on_b)}, identical: {on_a == on_b}"
    )
    settings = replica_settings(args)
    figure(
        "enrolments/s over 2 replicas (PostgreSQL)",
        median(totals),
        "/s",
        budget=500,
        better="higher",
        note=f"together, {median_of(args.runs)}",
        settings=settings,
    )
    figure(
        "duplicate devices or keys over 2 replicas (PostgreSQL)",
        (n - serials) + (n - pins),
        "",
        budget=0,
        note=f"{n} devices; listed by A {len(on_a)}, by B {len(on_b)}, same: {on_a == on_b}",
        settings=settings,
    )
    if not (n == serials == pins == len(on_a) == len(on_b) and on_a == on_b):
        raise SystemExit("duplicates, or an enrolment one replica does not list")


def decommissions(a: RunningController, b: RunningController, args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(cafile=a.ca)
    with a.client() as c:
        c.post("/profiles", json={"name": "p", "spec": {"config": {"x": 1}}}).raise_for_status()
        secret = c.post("/tokens", json={"site": "bench", "profile": "p"}).json()["token"]
        controller_id = c.get("/controller").json()["controller_id"]
        devices = []
        for i in range(args.devices):
            key, csr = make_csr()
            r = c.post(
                "/enrol", json={"token": secret, "csr": csr, "inventory": {"serial": f"d{i}"}}
            )
            r.raise_for_status()
            did = r.json()["device_id"]
            access = c.post(
                "/auth/token", json={"client_assertion": make_assertion(key, did, controller_id)}
            ).json()["access_token"]
            devices.append((did, access))
    polls = [httpx.Client(base_url=b.url + "/api/v1", verify=ctx, timeout=10) for _ in range(4)]
    seen, calls, stale = [], [], 0
    try:
        with a.client() as op:
            for did, access in devices:
                headers = {"authorization": f"Bearer {access}"}
                etag = polls[0].get(f"/devices/{did}/desired", headers=headers).headers["etag"]
                cached = {**headers, "if-none-match": etag}
                for p in polls:  # every connection holds it in memory
                    assert p.get(f"/devices/{did}/desired", headers=cached).status_code == 304
                began = time.perf_counter()
                op.post(f"/devices/{did}/decommission").raise_for_status()
                returned = time.perf_counter()
                calls.append(returned - began)
                pending = list(polls)
                while pending:
                    for p in list(pending):
                        r = p.get(f"/devices/{did}/desired", headers=cached)
                        if r.status_code == 304:
                            stale += 1
                        elif r.status_code == 403:
                            pending.remove(p)
                        else:
                            raise SystemExit(f"unexpected {r.status_code} from B: {r.text}")
                    if time.perf_counter() - returned > 10:
                        raise SystemExit("replica B kept serving a decommissioned device")
                seen.append(time.perf_counter() - returned)
    finally:
        for p in polls:
            p.close()
    ms = sorted(s * 1000 for s in seen)
    print(
        f"decommission on A refused by B ({args.devices} devices, 4 connections to B): median "
        f"{median(ms):.1f} ms, max {ms[-1]:.1f} ms after the call returned; {stale} stale 304s; "
        f"the decommission call itself took median {median([c * 1000 for c in calls]):.1f} ms"
    )
    figure(
        "decommission on A refused by B (PostgreSQL)",
        median(ms),
        "ms",
        budget=1000,
        note=f"median over {args.devices} devices; {stale} stale 304s",
        settings=replica_settings(args),
    )


def replica_settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        "database": "PostgreSQL",
        "controller workers": f"{args.workers or os.cpu_count()} per replica",
        "wrk": f"2 x ({args.threads} threads, {args.connections} connections), {args.seconds} s",
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--workers", type=int, help="workers per replica (default: its own)")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--connections", type=int, default=16, help="per wrk process")
    p.add_argument("--threads", type=int, default=1, help="per wrk process")
    p.add_argument("--devices", type=int, default=20)
    args = p.parse_args()

    os.environ.setdefault("EDGEFLEET_ENROL_RATE_PER_SECOND", "0")
    os.environ.setdefault("EDGEFLEET_TOKEN_RATE_PER_SECOND", "0")
    a = start_controller(args.database_url, workers=args.workers)
    b = None
    try:
        url = schema_url(a)
        b = start_replica(a, url, args.workers)
        with a.client() as c:
            c.post("/sites", json={"name": "bench"}).raise_for_status()
        enrolments(a, b, url, args)
        decommissions(a, b, args)
    finally:
        for ctl in (b, a):
            if ctl is not None:
                ctl.stop()


if __name__ == "__main__":
    main()
