"""Results ingest: rows/s through the controller's own ``results.store``, in process,
on PostgreSQL (``--database-url``) or SQLite (the default), on a fresh schema.

    python bench/ingest.py [--database-url postgresql://...] [--batch 1000]
                           [--rows 20000] [--runs 5] [--writers 1,4]

Batches are shaped like the agent's uploads: ``--batch`` records (the uploader sends
1,000) of the drain bench's record, about 300 bytes of JSON, with the agent's boot id
so that every row's time is corrected. Each writer is a process of its own (the
controller runs a worker per core) and sends ``--rows`` rows for a device of its own,
batch after batch, each one ``store()`` call as the upload route makes it (the batch
already parsed: the route's JSON and gzip are not timed). A run's figure is every
writer's rows over the time from the first writer's start to the last one's end;
the figure printed is the median of ``--runs`` runs, with min and max.

Variants: new rows from 1 and from 4 writers at once (distinct devices), and a retried
upload (one writer sends every batch again: every row is already held, with the same
payload, and is counted as a duplicate). ``insert`` is the share of the time spent in
``results._insert``, the statement that writes the rows; the rest is validation, the
stream's lock, the boot, the ``held`` scan, the ack and the commit. CPU per row is the
writers' own and (PostgreSQL) their backends', read from /proc: on a shared machine it
moves less than rows/s does, and 2 cores / (both together) is the ceiling on this box.
Most of PostgreSQL's share is the foreign key from ``result.device_id`` to ``device``
(one SPI lookup per row): on a schema without it the backend took 10-14 us a row
instead of 26-35, with the same COPY.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import figure, median_of
from bench.harness import fresh_schema, median
from bench.rollout_plan import populate
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.db import make_engine
from edgefleet.controller.metrics import Metrics
from edgefleet.controller.services import results
from edgefleet.controller.settings import load_settings
from edgefleet.wire import ResultBatch

DIGEST = "sha256:" + hashlib.sha256(b"model").hexdigest()
BOOT = "5b7e0c1a-3f52-4c1e-9d0e-bench000boot"


def payload(i: int) -> str:
    """The drain bench's record (the runner's shape), as the agent's buffer holds it."""
    return json.dumps(
        {
            "ts": 1_780_000_000 + i / 2,
            "model": {"name": "detector", "version": "1.4", "digest": DIGEST},
            "inputs_sha256": hashlib.sha256(str(i).encode()).hexdigest(),
            "outputs": {"scores": [[0.91, 0.05, 0.04]]},
            "latency_ms": 3.2,
        }
    )


def batches(epoch: str, rows: int, size: int) -> list[ResultBatch]:
    out = []
    now = time.time()
    for start in range(1, rows + 1, size):
        records = [
            {
                "seq": seq,
                "wall": now - 3600 + seq / 2,
                "mono": 1000.0 + seq / 2,
                "boot_id": BOOT,
                "digest": DIGEST,
                "slot": "A",
                "revision": 3,
                "payload": payload(seq),
            }
            for seq in range(start, min(start + size, rows + 1))
        ]
        body = {"epoch": epoch, "boot_id": BOOT, "wall": now, "mono": 5000.0, "records": records}
        out.append(ResultBatch.model_validate(body))
    return out


def backend_cpu(pid: int | None) -> float:
    """CPU seconds of a PostgreSQL backend on this machine (its /proc entry)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer(
    url: str, device: str, epoch: str, rows: int, size: int, retried: bool, barrier: Any, out: Any
) -> None:
    """One writer process: its own engine (as a worker has), its device's batches."""
    rt = SimpleNamespace(engine=make_engine(url), metrics=Metrics(dict))
    todo = batches(epoch, rows, size)
    if retried:
        for b in todo:
            results.store(rt, device, b)  # type: ignore[arg-type]
    inserting = [0.0]
    insert = results._insert

    def timed_insert(*args: Any) -> None:
        t = time.perf_counter()
        insert(*args)
        inserting[0] += time.perf_counter() - t

    results._insert = timed_insert  # type: ignore[assignment]
    with rt.engine.connect() as conn:  # open before the clock starts; store() reuses it
        pg = conn.dialect.name == "postgresql"
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() if pg else None
    barrier.wait()
    t0, cpu0, server0 = time.perf_counter(), time.process_time(), backend_cpu(pid)
    for b in todo:
        ack = results.store(rt, device, b)  # type: ignore[arg-type]
        expected = (0, len(b.records)) if retried else (len(b.records), 0)
        assert (ack.stored, ack.duplicates) == expected, ack
    t1, cpu1, server1 = time.perf_counter(), time.process_time(), backend_cpu(pid)
    assert rt.engine.pool.checkedin() == 1, "store() used a second connection"
    rt.engine.dispose()
    out.put(Done(t0, t1, inserting[0], rows, cpu1 - cpu0, server1 - server0))


@dataclass
class Done:
    start: float
    end: float
    inserting: float
    rows: int
    cpu: float
    """The writer's own CPU seconds (the controller's share)."""
    server_cpu: float
    """Its PostgreSQL backend's (WAL writer, checkpointer and others not counted)."""


@dataclass
class Figures:
    rate: float
    insert_share: float
    cpu_us: float
    server_cpu_us: float


def run(url: str, devices: list[str], epoch: str, args: Any, retried: bool) -> Figures:
    """rows/s of one run, the share of the writers' time spent in ``_insert``, and CPU
    microseconds per row in the writers and in their PostgreSQL backends."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(devices))
    out = ctx.Queue()
    jobs = [(url, d, epoch, args.rows, args.batch, retried, barrier, out) for d in devices]
    procs = [ctx.Process(target=writer, args=job) for job in jobs]
    for p in procs:
        p.start()
    done: list[Done] = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"a writer failed with exit code {p.exitcode}")
    rows = sum(d.rows for d in done)
    busy = sum(d.end - d.start for d in done)
    return Figures(
        rows / (max(d.end for d in done) - min(d.start for d in done)),
        sum(d.inserting for d in done) / busy,
        sum(d.cpu for d in done) / rows * 1e6,
        sum(d.server_cpu for d in done) / rows * 1e6,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url")
    p.add_argument("--batch", type=int, default=1000, help="records per batch (agent: 1000)")
    p.add_argument("--rows", type=int, default=20_000, help="rows per writer and run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--writers", default="1,4", help="writer counts for new rows")
    args = p.parse_args()
    url = fresh_schema(args.database_url) if args.database_url else None
    settings = load_settings(
        data_dir=Path(tempfile.mkdtemp(prefix="ef-ingest-")),
        database_url=url,
        gitops_writer=False,
        rollout_engine=False,
    )
    prepare(settings)
    engine = make_engine(settings.effective_database_url)
    counts = [int(n) for n in args.writers.split(",")]
    populate(engine, max(counts), 1)
    engine.dispose()
    db = "PostgreSQL" if url else "SQLite"
    print(
        f"results ingest on {db}: results.store() of batches of {args.batch:,} records "
        f"(~{len(payload(1))} B JSON payload), {args.rows:,} rows per writer, median of "
        f"{args.runs} run{'s' * (args.runs > 1)}",
        flush=True,
    )
    variants = [(f"new rows, {n} writer{'s' * (n > 1)}", n, False) for n in counts]
    variants.append(("retried batches (all duplicates), 1 writer", 1, True))
    for v, (label, n, retried) in enumerate(variants):
        devices = [f"dev-{d:06d}" for d in range(n)]
        runs = [
            # a new stream per run: its rows are new
            run(settings.effective_database_url, devices, f"{v + 1:08x}{r + 1:08x}", args, retried)
            for r in range(args.runs)
        ]
        rates = [f.rate for f in runs]
        cpu = median([f.cpu_us for f in runs])
        server = median([f.server_cpu_us for f in runs])
        print(
            f"  {label:<44} {median(rates):>9,.0f} rows/s (min {min(rates):,.0f}, max "
            f"{max(rates):,.0f}); insert {median([f.insert_share for f in runs]):.0%} of the "
            f"time; CPU per row {cpu:.1f} us in the writer"
            + (f" + {server:.1f} us in PostgreSQL" if url else ""),
            flush=True,
        )
        # The budget is PostgreSQL's, for new rows from the writers a controller has.
        budgeted = url is not None and not retried and n == max(counts)
        figure(
            f"results ingest, {label}",
            median(rates),
            "rows/s",
            budget=50_000 if budgeted else None,
            better="higher",
            note=f"batches of {args.batch:,}, {median_of(args.runs)}",
            settings={"database": db, "batch": args.batch, "writers": n},
        )


if __name__ == "__main__":
    main()
