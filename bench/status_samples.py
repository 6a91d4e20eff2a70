"""What the status history costs and how fast the console's series read, on a fleet of
10,000 devices (100 sites) written straight into a migrated database.

    python bench/status_samples.py [--devices 10000] [--minutes 60] [--results 1000000]
                                   [--database-url URL]

1. The status path, in process: ``device_status.heartbeat`` (what a repeated report
   costs) with the sampler as shipped (first heartbeat of a period: a sample is queued),
   in a period already sampled, and with sampling turned off; ``device_status.store`` of a
   changed report with and without sampling.
2. The flush: every device's sample of one period in one statement (and, beside it, the
   last-seen flush of as many devices), for ``--minutes`` one-minute periods, median;
   the bytes a sample takes; one period's rollup.
3. The series over that hour and over ``--results`` results spread over a day: fleet,
   site and device, each with its plan (EXPLAIN), so that an index is seen used.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlalchemy import event, insert, text

from bench.figures import database, figure
from bench.harness import fresh_schema, median
from bench.rollout_plan import populate
from edgefleet.controller import sample_rollup
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.console import series
from edgefleet.controller.models import Result
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import device_status
from edgefleet.controller.settings import load_settings
from edgefleet.controller.status_samples import values_of
from edgefleet.wire import DeviceState, StatusReport


def report(i: int) -> tuple[StatusReport, str]:
    body = StatusReport(
        applied_revision=1,
        health={"ok": i % 50 != 0},
        inference={"count": 100, "p95_ms": 5.0 + i % 40, "error_rate": 0.001 * (i % 7)},
        buffer={"depth": i % 100, "drops": {"evicted": i % 3}},
    )
    raw = json.dumps(body.model_dump(mode="json")).encode()
    return body, device_status.digest(raw)


def per_call_us(fn: Callable[[str], Any], ids: list[str]) -> float:
    t0 = time.perf_counter()
    for d in ids:
        fn(d)
    return (time.perf_counter() - t0) / len(ids) * 1e6


def timed(fn: Callable[[], Any], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times) * 1000


def plans(rt: Runtime, fn: Callable[[], Any]) -> list[str]:
    """The plan of every SELECT ``fn`` runs, by the database itself."""
    seen: list[tuple[str, Any]] = []

    def grab(_c: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))

    event.listen(rt.engine, "before_cursor_execute", grab)
    try:
        fn()
    finally:
        event.remove(rt.engine, "before_cursor_execute", grab)
    pg = rt.engine.dialect.name == "postgresql"
    out = []
    raw = rt.engine.raw_connection()
    try:
        cur = raw.cursor()
        for statement, params in seen:
            cur.execute(("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + statement, params)
            rows = cur.fetchall()
            lines = [r[0] if pg else r[-1] for r in rows]
            out.append(" / ".join(line.strip() for line in lines if "Scan" in line or not pg))
    finally:
        raw.close()
    return out


def add_results(rt: Runtime, ids: list[str], count: int, day: datetime) -> None:
    now = datetime.now(UTC)
    chunk = 20_000
    step = 86400 / count
    for start in range(0, count, chunk):
        rows = [
            {
                "device_id": ids[n % len(ids)],
                "epoch": "e1",
                "seq": n // len(ids) + 1,
                "time": day + timedelta(seconds=n * step),
                "device_time": (day + timedelta(seconds=n * step)).timestamp(),
                "corrected": True,
                "boot_id": "",
                "digest": "",
                "slot": "A",
                "revision": 1,
                "encoding": "json",
                "payload": '{"label":"cat","score":0.9}',
                "received_at": now,
            }
            for n in range(start, min(count, start + chunk))
        ]
        with rt.engine.begin() as conn:
            conn.execute(insert(Result.__table__), rows)  # type: ignore[attr-defined]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--minutes", type=int, default=60)
    p.add_argument("--results", type=int, default=1_000_000)
    p.add_argument("--database-url")
    args = p.parse_args()
    url = fresh_schema(args.database_url) if args.database_url else None
    settings = load_settings(
        data_dir=Path(tempfile.mkdtemp(prefix="ef-samples-")),
        database_url=url,
        gitops_writer=False,
        rollout_engine=False,
        # The periods below are minutes; the shipped period became 300 s after this bench
        # was written, and a second sample of a period is (rightly) not taken.
        status_sample_seconds=60,
    )
    prepare(settings)
    rt = Runtime(settings)
    db = "PostgreSQL" if url else "SQLite"
    populate(rt.engine, args.devices, 100)
    ids = [f"dev-{d:06d}" for d in range(args.devices)]
    reports = {d: report(i) for i, d in enumerate(ids)}
    print(f"status history, {args.devices:,} devices in 100 sites ({db})")

    # 1. The status path.
    sampler = rt.status_samples
    # store() of a changed report, one device with sampling, the next without, alternating
    record, skip = sampler.record, (lambda *a, **k: None)
    with_sampling, without = [], []
    for i, d in enumerate(ids[: min(2000, len(ids))]):
        sampler.record = record if i % 2 else skip  # type: ignore[method-assign]
        t0 = time.perf_counter()
        device_status.store(rt, d, *reports[d])
        (with_sampling if i % 2 else without).append(time.perf_counter() - t0)
    sampler.record = record  # type: ignore[method-assign]
    for i, d in enumerate(ids):
        body, digest = reports[d]
        rt.status_digests[d] = (digest, DeviceState.ready)
        sampler.record(d, values_of(body, DeviceState.ready, i % 100 + 1))  # populate's sites
    sampler._sampled.clear()
    sampler._pending.clear()
    beat = {d: reports[d][1] for d in ids}
    seen, off = sampler.seen, (lambda *a, **k: None)

    def heartbeats(d: str) -> None:
        device_status.heartbeat(rt, d, beat[d])

    firsts, agains, offs = [], [], []
    for _ in range(5):  # interleaved passes, medians: these are microseconds
        sampler._sampled.clear()
        firsts.append(per_call_us(heartbeats, ids))
        agains.append(per_call_us(heartbeats, ids))
        sampler.seen = off  # type: ignore[method-assign]
        offs.append(per_call_us(heartbeats, ids))
        sampler.seen = seen  # type: ignore[method-assign]
        sampler._pending.clear()
        rt.last_seen._pending.clear()
    first, again, off_us = median(firsts), median(agains), median(offs)
    sampler._pending.clear()
    rt.last_seen._pending.clear()
    print(
        f"  heartbeat: {off_us:.2f} us without sampling, {first:.2f} us when it queues the "
        f"period's sample, {again:.2f} us once the period has one"
    )
    settings = {"database": database(url), "devices": args.devices}
    figure(
        f"heartbeat with sampling ({db})",
        first,
        "us",
        note=f"{off_us:.2f} us without sampling; median of 5 passes",
        settings=settings,
    )
    print(
        f"  store of a changed report (median): {median(without) * 1000:.2f} ms without "
        f"sampling, {median(with_sampling) * 1000:.2f} ms with"
    )

    # 2. The flush, for --minutes periods of every device.
    hour = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=args.minutes)
    flushes, seen_flushes = [], []
    for m in range(args.minutes):
        at = (hour + timedelta(minutes=m)).timestamp()
        for d in ids:
            sampler._sample(d, sampler._values[d], at)
            rt.last_seen.touch(d)
        t0 = time.perf_counter()
        assert sampler.flush() == len(ids)
        flushes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rt.last_seen.flush()
        seen_flushes.append(time.perf_counter() - t0)
    rows = args.devices * args.minutes
    with rt.engine.connect() as conn:
        if url:
            conn.execute(text("ANALYZE devicesample"))
            size = conn.scalar(text("SELECT pg_total_relation_size('devicesample')"))
        else:
            size = None
    size_note = f", {size / rows:.0f} bytes per sample with its indexes" if size else ""
    print(
        f"  flush of {args.devices:,} samples (one period): median "
        f"{median(flushes) * 1000:.0f} ms, max {max(flushes) * 1000:.0f} ms over "
        f"{args.minutes} periods (last-seen flush of as many devices: "
        f"{median(seen_flushes) * 1000:.0f} ms){size_note}"
    )
    figure(
        f"status samples flush, {args.devices:,} samples ({db})",
        median(flushes) * 1000,
        "ms",
        note=f"one period, median of {args.minutes}",
        settings=settings,
    )
    now = hour + timedelta(minutes=args.minutes)
    buckets = series.last_hour(now - timedelta(seconds=1))

    def raw_fleet() -> Any:
        return series.status_per_bucket(rt.engine, buckets)

    t_raw = timed(raw_fleet, 3)
    t0 = time.perf_counter()
    periods = sample_rollup.roll_up(rt.engine, 60, now + timedelta(minutes=2), 10)
    t_roll = (time.perf_counter() - t0) * 1000
    print(
        f"  rollup of {periods} periods: {t_roll / max(periods, 1):.0f} ms per period of "
        f"{args.devices:,} samples"
    )

    # 3. The series.
    day = now - timedelta(days=1)
    t0 = time.perf_counter()
    add_results(rt, ids, args.results, day)
    with rt.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if url else "ANALYZE"))
    print(f"  ({args.results:,} results over a day written in {time.perf_counter() - t0:.0f} s)")
    days = series.last_day(now - timedelta(seconds=1))
    e, one = rt.engine, ids[7]
    checks: list[tuple[str, Callable[[], Any]]] = [
        ("results per 30 min over a day, fleet", lambda: series.results_per_bucket(e, days)),
        ("  the same, one site", lambda: series.results_per_bucket(e, days, site_id=7)),
        ("  the same, one device", lambda: series.results_per_bucket(e, days, device_id=one)),
        ("status per minute over the hour, fleet (rollups)", raw_fleet),
        ("  the same, one site", lambda: series.status_per_bucket(e, buckets, site_id=7)),
        ("  the same, one device", lambda: series.device_status_per_bucket(e, buckets, one)),
        ("fleet health now", lambda: series.fleet_health(e, 10, now)),
    ]
    for name, fn in checks:
        ms = timed(fn)
        print(f"  {name}: {ms:.1f} ms")
        if name == "status per minute over the hour, fleet (rollups)":
            figure(f"fleet status over the hour from rollups ({db})", ms, "ms", settings=settings)
        for plan in plans(rt, fn):
            print(f"      plan: {plan[:160]}")
    print(f"  (status per minute over the hour, fleet, from the samples alone: {t_raw:.0f} ms)")
    counts = series.results_per_bucket(rt.engine, days)
    assert sum(c.results for c in counts) > 0
    rt.engine.dispose()


if __name__ == "__main__":
    main()
