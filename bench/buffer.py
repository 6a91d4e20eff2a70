"""The result buffer's budget: durable local ingest, ``synchronous=FULL`` (WAL).

    python bench/buffer.py [--runs 5] [--batched 50000] [--batch 100] [--single 5000]

Batched is ``append_many`` of ``--batch`` records, one commit (one fsync) each; one
per call is ``append`` from one thread, one commit each, and from 8 threads at once,
whose calls share commits. The record is the runner's (about 200 bytes of JSON).
Each figure is the median of ``--runs`` runs on a fresh database in a temp folder
beside ``/tmp`` (the disk matters: say which when quoting).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.buffer import Buffer, Record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure

RECORD: Record = {
    "payload": {
        "ts": 1718000000.123,
        "model": {"name": "detector", "version": "2.0", "digest": "sha256:" + "ab" * 32},
        "inputs_sha256": "cd" * 32,
        "outputs": {"y": [[0.25, -1.5]]},
        "latency_ms": 0.05,
    },
    "digest": "sha256:" + "ab" * 32,
    "slot": "a",
    "revision": 7,
}


def _rate(count: int, work: Callable[[Buffer], None]) -> float:
    with tempfile.TemporaryDirectory(dir="/tmp") as folder, Buffer(Path(folder) / "r.db") as buf:
        buf.append(RECORD)  # the file, its schema and WAL exist before the clock starts
        started = time.perf_counter()
        work(buf)
        elapsed = time.perf_counter() - started
        assert buf.stats().depth == count + 1
    return count / elapsed


def batched(n: int, size: int) -> Callable[[Buffer], None]:
    def work(buf: Buffer) -> None:
        for _ in range(n // size):
            buf.append_many([RECORD] * size)

    return work


def single(n: int) -> Callable[[Buffer], None]:
    def work(buf: Buffer) -> None:
        for _ in range(n):
            buf.append(RECORD)

    return work


def threaded(n: int, threads: int = 8) -> Callable[[Buffer], None]:
    def work(buf: Buffer) -> None:
        workers = [
            threading.Thread(target=single(n // threads), args=(buf,)) for _ in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return work


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--batched", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--single", type=int, default=5_000)
    args = p.parse_args()
    n_batched = args.batched // args.batch * args.batch
    cases = [
        (
            f"batched ({args.batch} per append_many)",
            n_batched,
            batched(n_batched, args.batch),
            20_000,
        ),
        ("one per call, 1 thread", args.single, single(args.single), 2_000),
        ("one per call, 8 threads", args.single // 8 * 8, threaded(args.single), 2_000),
    ]
    print(f"durable local ingest, journal_mode=WAL, synchronous=FULL, median of {args.runs}")
    for name, count, work, budget in cases:
        rates = [_rate(count, work) for _ in range(args.runs)]
        verdict = "ok" if statistics.median(rates) >= budget else "OVER BUDGET"
        print(
            f"  {name:32} {statistics.median(rates):>9,.0f} results/s "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}; budget >= {budget:,}) {verdict}"
        )
        figure(
            f"agent buffer ingest, {name}",
            statistics.median(rates),
            "results/s",
            budget=budget,
            better="higher",
            note=f"median of {args.runs}; {count:,} results",
            settings={"sqlite": "WAL, synchronous=FULL", "disk": "/tmp"},
        )


if __name__ == "__main__":
    main()
