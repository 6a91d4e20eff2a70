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
stream's lock, the boot, the ``held`` scan and the ack.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    with rt.engine.connect():
        pass  # the pool's connection is open before the clock starts
    barrier.wait()
    t0 = time.perf_counter()
    for b in todo:
        ack = results.store(rt, device, b)  # type: ignore[arg-type]
        expected = (0, len(b.records)) if retried else (len(b.records), 0)
        assert (ack.stored, ack.duplicates) == expected, ack
    t1 = time.perf_counter()
    rt.engine.dispose()
    out.put((t0, t1, inserting[0], rows))


def run(url: str, devices: list[str], epoch: str, args: Any, retried: bool) -> tuple[float, float]:
    """rows/s of one run, and the share of the writers' time spent in ``_insert``."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(devices))
    out = ctx.Queue()
    jobs = [(url, d, epoch, args.rows, args.batch, retried, barrier, out) for d in devices]
    procs = [ctx.Process(target=writer, args=job) for job in jobs]
    for p in procs:
        p.start()
    done = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"a writer failed with exit code {p.exitcode}")
    start, end = min(d[0] for d in done), max(d[1] for d in done)
    busy = sum(d[1] - d[0] for d in done)
    return sum(d[3] for d in done) / (end - start), sum(d[2] for d in done) / busy


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
        f"{args.runs} runs",
        flush=True,
    )
    variants = [(f"new rows, {n} writer{'s' * (n > 1)}", n, False) for n in counts]
    variants.append(("retried batches (all duplicates), 1 writer", 1, True))
    for v, (label, n, retried) in enumerate(variants):
        figures, shares = [], []
        devices = [f"dev-{d:06d}" for d in range(n)]
        for r in range(args.runs):
            epoch = f"{v + 1:08x}{r + 1:08x}"  # a new stream per run: its rows are new
            rate, share = run(settings.effective_database_url, devices, epoch, args, retried)
            figures.append(rate)
            shares.append(share)
        print(
            f"  {label:<44} {median(figures):>9,.0f} rows/s (min {min(figures):,.0f}, max "
            f"{max(figures):,.0f}); insert {median(shares):.0%} of the time",
            flush=True,
        )


if __name__ == "__main__":
    main()
