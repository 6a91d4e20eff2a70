"""A stand-in for the model runner in fault tests: it appends results to the agent's
buffer and journals each one only after the buffer acked it locally.

    python tests/support/resultwriter.py DB JOURNAL --run R --seed S [options]

Each record's payload is ``{"run": R, "n": N, "pad": ...}`` (N counts this run's
records). After ``Buffer.append`` / ``append_many`` returns (the local ack), one JSON
line per record goes to the journal, ``{"seq": SEQ, "payload": PAYLOAD}``, flushed and
fsynced: whatever is in the journal was acked, so a test that kills this process at
any moment knows what must never be lost. A record acked but not yet journaled when
the process died is simply unknown to the test (it may arrive; it must arrive once).
A commit the buffer refused (``BufferFull``: drop-newest policy, or a disk full even
after evicting) is journaled as ``{"refused": COUNT, "error": CODE}``.

``--count`` stops after that many records (default: run until killed);
``--interval`` sleeps up to that many seconds between commits.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgefleet.agent.buffer import Buffer, BufferFull, Record  # noqa: E402

DIGEST = "sha256:" + "5e" * 32
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def payload(run: int, n: int, rng: random.Random, pad: int) -> dict[str, Any]:
    """Random padding (so batches do not gzip to nothing), ``pad`` bytes on average."""
    length = rng.randint(pad // 2, pad + pad // 2)
    return {"run": run, "n": n, "pad": "".join(rng.choices(ALPHABET, k=length))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("journal", type=Path)
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--max-batch", type=int, default=40)
    parser.add_argument("--pad", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.0)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    args.db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    buffer = Buffer(args.db)
    fd = os.open(args.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    n = 0
    print(f"writing to {args.db} (epoch {buffer.epoch})", flush=True)
    while not args.count or n < args.count:
        size = 1 if rng.random() < 0.4 else rng.randint(2, args.max_batch)
        if args.count:
            size = min(size, args.count - n)
        payloads = [payload(args.run, n + k, rng, args.pad) for k in range(size)]
        records: list[Record] = [{"payload": p, "digest": DIGEST} for p in payloads]
        try:
            # One record through append, several through append_many: both are acks.
            seqs = buffer.append_many(records) if size > 1 else [buffer.append(records[0])]
        except BufferFull as exc:
            lines = [json.dumps({"refused": size, "error": exc.code})]
        else:
            # The local ack: only now is each record the test's to check.
            lines = [
                json.dumps({"seq": s, "payload": p}, separators=(",", ":"))
                for s, p in zip(seqs, payloads, strict=True)
            ]
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
        n += size
        if args.interval:
            time.sleep(rng.uniform(0, args.interval))
    buffer.close()
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
