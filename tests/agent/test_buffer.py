"""The durable result queue: order, acks, kill -9, the size cap and its policies."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefleet.agent.buffer import (
    UNENROLLED,
    Buffer,
    BufferFull,
    Policy,
    RecordTooLarge,
)


def rec(i: int, **extra: object) -> dict:
    return {"payload": {"i": i, "pad": "x" * 200}, "digest": "sha256:ab", **extra}


def test_append_and_read_in_order_with_the_key_and_timestamps(tmp_path: Path) -> None:
    with Buffer(tmp_path / "r.db") as buf:
        first = buf.append(rec(0, slot="a", revision=3))
        rest = buf.append_many([rec(i) for i in range(1, 5)])
        buf.append({"payload": b"\x00\x01binary"})
        rows = buf.read_from(0)
    assert [r.seq for r in rows] == [first, *rest, rest[-1] + 1]
    assert [r.payload["i"] for r in rows[:5]] == [0, 1, 2, 3, 4]
    assert rows[-1].payload == b"\x00\x01binary"
    assert (rows[0].slot, rows[0].revision, rows[0].digest) == ("a", 3, "sha256:ab")
    assert rows[0].epoch == rows[-1].epoch and len(rows[0].epoch) == 16
    assert abs(rows[0].wall - time.time()) < 60 and rows[0].mono > 0
    assert rows[0].boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_read_from_honours_count_and_bytes_but_always_gives_one(tmp_path: Path) -> None:
    with Buffer(tmp_path / "r.db") as buf:
        seqs = buf.append_many([rec(i) for i in range(10)])
        assert [r.seq for r in buf.read_from(seqs[3], limit_count=4)] == seqs[3:7]
        size = buf.read_from(0)[0].size
        assert len(buf.read_from(0, limit_bytes=size * 3)) == 3
        assert len(buf.read_from(0, limit_bytes=1)) == 1


def test_sequences_epoch_and_device_survive_reopen(tmp_path: Path) -> None:
    with Buffer(tmp_path / "r.db") as buf:
        assert buf.device == UNENROLLED
        buf.bind_device("dev-1")
        seqs = buf.append_many([rec(i) for i in range(3)])
        epoch = buf.epoch
        buf.delete_through(seqs[-1])  # an emptied buffer does not reuse sequences
    with Buffer(tmp_path / "r.db") as buf:
        assert (buf.epoch, buf.device) == (epoch, "dev-1")
        assert buf.append(rec(3)) == seqs[-1] + 1
    with Buffer(tmp_path / "other.db") as buf:
        assert buf.epoch != epoch


def test_delete_through_deletes_only_what_was_acked(tmp_path: Path) -> None:
    with Buffer(tmp_path / "r.db") as buf:
        seqs = buf.append_many([rec(i) for i in range(10)])
        assert buf.delete_through(seqs[3]) == 4
        assert [r.seq for r in buf.read_from(0)] == seqs[4:]
        stats = buf.stats()
        assert stats.depth == 6 and stats.bytes == sum(r.size for r in buf.read_from(0))
        assert stats.oldest_age_seconds is not None and stats.drops == {}


def test_concurrent_producers_share_commits_and_each_gets_its_own_sequences(
    tmp_path: Path,
) -> None:
    got: list[list[int]] = []
    with Buffer(tmp_path / "r.db") as buf:

        def produce(k: int) -> None:
            got.append([buf.append(rec(k * 1000 + i)) for i in range(200)])

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = buf.read_from(0, limit_count=10_000, limit_bytes=1 << 30)
    every = sorted(s for seqs in got for s in seqs)
    assert every == [r.seq for r in rows] and len(set(every)) == 1600
    assert all(seqs == sorted(seqs) for seqs in got)


def test_an_oversized_payload_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    with Buffer(tmp_path / "r.db", max_payload_bytes=1000) as buf:
        with pytest.raises(RecordTooLarge, match="1500 bytes is over the buffer's limit of 1000"):
            buf.append_many([rec(0), {"payload": b"x" * 1500}])
        with pytest.raises(RecordTooLarge):
            buf.append({"payload": {"big": "y" * 2000}})
        assert buf.read_from(0) == [] and buf.stats().depth == 0


CAP = 1024 * 1024


def fill(buf: Buffer, n: int) -> list[int]:
    seqs: list[int] = []
    for start in range(0, n, 100):
        seqs += buf.append_many([rec(i) for i in range(start, min(start + 100, n))])
    return seqs


def test_a_full_buffer_drops_the_oldest_by_default_and_counts_them(tmp_path: Path) -> None:
    with Buffer(tmp_path / "r.db", cap_bytes=CAP, reserve_bytes=0) as buf:
        seqs = fill(buf, 10_000)  # ~2.8 MB of records into a 1 MiB cap
        stats = buf.stats()
        kept = [r.seq for r in buf.read_from(0, limit_count=20_000, limit_bytes=1 << 30)]
    assert (tmp_path / "r.db").stat().st_size <= CAP
    assert stats.bytes <= CAP and stats.depth == len(kept)
    assert stats.drops == {"oldest": 10_000 - len(kept)}
    assert kept == seqs[-len(kept) :]  # the newest, contiguous


def test_drop_newest_refuses_what_does_not_fit_and_keeps_the_backlog(tmp_path: Path) -> None:
    with Buffer(tmp_path / "r.db", cap_bytes=CAP, policy=Policy.DROP_NEWEST) as buf:
        seqs: list[int] = []
        refused = 0
        for i in range(4_000):
            try:
                seqs.append(buf.append(rec(i)))
            except BufferFull as exc:
                assert "full" in str(exc) and "drop newest" in str(exc)
                refused += 1
        kept = [r.seq for r in buf.read_from(0, limit_count=20_000, limit_bytes=1 << 30)]
        assert buf.stats().drops == {"newest": refused}
    assert refused > 0 and kept == seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_sample_thins_the_backlog_and_keeps_its_time_span(tmp_path: Path) -> None:
    with Buffer(tmp_path / "r.db", cap_bytes=CAP, policy=Policy.SAMPLE) as buf:
        seqs = fill(buf, 6_000)
        kept = [r.seq for r in buf.read_from(0, limit_count=20_000, limit_bytes=1 << 30)]
        drops = buf.stats().drops
    assert kept[-1] == seqs[-1] and kept[0] <= seqs[len(seqs) // 4]  # spans most of it
    assert drops == {"sampled": 6_000 - len(kept)} and len(kept) < 6_000


CHILD = """
import sys
from pathlib import Path
from edgefleet.agent.buffer import Buffer
buf = Buffer(Path(sys.argv[1]))
i = 0
while True:
    n = 1 + i % 7
    seqs = buf.append_many([{"payload": {"i": i + k}} for k in range(n)])
    i += n
    sys.stdout.write(" ".join(map(str, seqs)) + "\\n")
    sys.stdout.flush()
"""


def test_kill_9_while_appending_loses_no_acked_record(tmp_path: Path) -> None:
    seed = int(os.environ.get("BUFFER_KILL_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (BUFFER_KILL_SEED={seed} to replay)")
    rng = random.Random(seed)
    path = tmp_path / "r.db"
    acked: list[int] = []
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # it opened the database and wrote once
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        lines = (first + out).split("\n")[:-1]  # complete lines only
        acked += [int(s) for line in lines for s in line.split()]
    with Buffer(path) as buf:
        have = {r.seq for r in buf.read_from(0, limit_count=10**7, limit_bytes=1 << 40)}
        assert buf.stats().depth == len(have)  # the totals moved with every commit
    assert len(acked) > 100, f"seed {seed}: the children acked only {len(acked)}"
    assert set(acked) <= have, f"seed {seed}: acked but lost {sorted(set(acked) - have)[:10]}"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
