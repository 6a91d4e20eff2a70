"""Power cut at every system call of the result buffer: nothing locally acked is lost.

The writer appends results (each ``append`` returning is the local ack, marked in the
trace), deletes through the controller's ack twice, closes the buffer, opens it again
and goes on. It runs once under strace; ``tests/support/crashreplay.py`` then builds
what the disk could hold after a power cut before each of its calls, with unsynced
writes dropped (all, some or none of them, writes torn by sector). Every such folder
must hold a sound SQLite database (``PRAGMA integrity_check``) that the buffer opens and
appends to, in which:

- every record acked before the cut is there, whole, unless a delete through a later
  sequence had begun (the controller held it);
- the ``acked`` meta is at least the last delete that returned, at most the last one
  begun, and no record at or below it is left (the delete and the ack are one
  transaction);
- the epoch is the writer's, and a new record gets a sequence above every one acked.

Two ways of opening the database: as the agent does (WAL with its ``-shm`` file, which
strace cannot follow into its ``mmap``: SQLite rebuilds that index from the WAL on the
first open after a crash, truncating the file, so its content never matters), and with
``locking_mode=EXCLUSIVE`` (no ``-shm`` at all, every write modelled, as DESIGN.md
allows for a harness that cannot carry the shared memory).

The seed is printed; ``EDGEFLEET_CRASH_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.buffer import Buffer
from tests.support.crashreplay import MARKER_DIR, Recording, crash_states, record

WRITER = """
import os, sys
from pathlib import Path
from edgefleet.agent.buffer import Buffer

folder, mode = Path(sys.argv[1]), sys.argv[2]


class Tuned(Buffer):
    def _setup(self):
        if mode == "exclusive":  # before journal_mode=WAL: no -shm file
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        super()._setup()
        if mode == "unsynced":  # the negative control: commits not fsynced
            self._db.execute("PRAGMA synchronous=OFF")


def mark(label):
    try:
        os.open(f"MARKER_DIR/{label}", os.O_RDONLY)
    except OSError:
        pass


def payload(i):
    return {"i": i, "pad": "PAD" * (i % 5 * 90)}


def opened():
    return Tuned(folder / "results.db", reserve_bytes=0)


buf = opened()
done = 0


def append(n):
    global done
    records = [{"payload": payload(done + k + 1), "digest": "sha256:ab"} for k in range(n)]
    seqs = [buf.append(records[0])] if n == 1 else buf.append_many(records)
    assert seqs == list(range(done + 1, done + n + 1)), seqs
    mark(f"acked-{seqs[0]}-{seqs[-1]}")
    done += n


def delete_through(seq):
    mark(f"deleting-{seq}")
    buf.delete_through(seq)
    mark(f"deleted-{seq}")


for n in (1, 3, 1, 6, 2):
    append(n)
delete_through(5)
for n in (1, 4, 1):
    append(n)
delete_through(14)
append(2)
buf.close()
mark("closed")
buf = opened()
append(3)
delete_through(19)
append(1)
buf.close()
""".replace("MARKER_DIR", MARKER_DIR)

RECORDS = 25
"""Appended by the writer, sequences 1..25."""


def payload(i: int) -> dict[str, Any]:
    return {"i": i, "pad": "PAD" * (i % 5 * 90)}


def _seed() -> int:
    seed = int(os.environ.get("EDGEFLEET_CRASH_SEED") or random.randrange(1 << 32))
    print(f"power-cut seed: {seed} (EDGEFLEET_CRASH_SEED={seed} replays it)")
    return seed


def _record(tmp_path: Path, mode: str) -> tuple[Recording, str]:
    if shutil.which("strace") is None:
        pytest.skip("strace not found: install Debian's strace package (deps/apt-test.txt)")
    root = tmp_path / "device"
    root.mkdir()
    recording = record(WRITER, root, (str(root), mode))
    with contextlib.closing(sqlite3.connect(root / "results.db")) as conn:
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        assert conn.execute("SELECT max(seq) FROM results").fetchone()[0] == RECORDS
    return recording, epoch


def _labels(recording: Recording, k: int, prefix: str) -> list[str]:
    return [
        op.label[len(prefix) :]
        for op in recording.ops[:k]
        if op.kind == "marker" and op.label.startswith(prefix)
    ]


def _check(folder: Path, recording: Recording, k: int, epoch: str) -> None:
    """The buffer after a power cut before call ``k``."""
    acked: set[int] = set()
    for span in _labels(recording, k, "acked-"):
        first, last = map(int, span.split("-"))
        acked.update(range(first, last + 1))
    returned = max(map(int, _labels(recording, k, "deleted-")), default=0)
    begun = max(map(int, _labels(recording, k, "deleting-")), default=0)
    db = folder / "results.db"
    if not db.exists():
        assert not acked, "the database is gone, with records acked in it"
    else:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        assert result == "ok", f"integrity_check: {result}"
    with Buffer(db, reserve_bytes=0) as buf:
        ack = buf.acked
        assert returned <= ack <= begun, (
            f"acked meta {ack}: deletes returned through {returned}, begun through {begun}"
        )
        rows = buf.read_from(0, limit_count=1000, limit_bytes=1 << 30)
        seqs = [r.seq for r in rows]
        assert all(s > ack for s in seqs), f"records at or below the ack {ack}: {seqs}"
        lost = sorted(s for s in acked if s > ack and s not in seqs)
        assert not lost, f"acked but lost: {lost}"
        torn = [r.seq for r in rows if r.payload != payload(r.seq) or r.digest != "sha256:ab"]
        assert not torn, f"records not as written: {torn}"
        if acked:
            assert buf.epoch == epoch, "a new epoch: the controller would see a new series"
        stats = buf.stats()
        assert stats.depth == len(rows) and stats.bytes == sum(r.size for r in rows)
        new = buf.append({"payload": {"after": "the cut"}})
        assert new > max(acked | {ack}), f"sequence {new} given again"
        assert [r.seq for r in buf.read_from(new)] == [new]


def _first_violation(
    recording: Recording, epoch: str, seed: int, scratch: Path, subsets: int
) -> tuple[str | None, int]:
    """The first crash state that breaks a guarantee (described), and the states tried."""
    states = 0
    for state in crash_states(recording, random.Random(seed), subsets=subsets):
        folder = state.tree.materialise(scratch)
        states += 1
        try:
            _check(folder, recording, state.k, epoch)
        except Exception as exc:  # any failure is the finding
            last = recording.ops[state.k - 1] if state.k else None
            return (
                f"power cut before call {state.k}/{len(recording.ops)} ({state.how}; last "
                f"call made: {last}): {type(exc).__name__}: {exc}"
            ), states
    return None, states


@pytest.mark.parametrize("mode", ["shared", "exclusive"])
def test_a_power_cut_at_any_call_loses_no_acked_result(tmp_path: Path, mode: str) -> None:
    seed = _seed()
    recording, epoch = _record(tmp_path, mode)
    kinds = {op.kind for op in recording.ops}
    assert {"write", "fsync", "marker", "unlink"} <= kinds, kinds
    if mode == "exclusive":
        assert not any(op.name.endswith("-shm") for op in recording.ops)
    problem, states = _first_violation(recording, epoch, seed, tmp_path / "after-cut", 4)
    assert problem is None, f"seed {seed} ({mode}): {problem}"
    print(f"{mode}: {len(recording.ops)} calls, {states} distinct crash states checked")
    assert len(recording.ops) > 100 and states > 200


def test_the_check_finds_acked_results_lost_when_commits_are_not_synced(
    tmp_path: Path,
) -> None:
    """A negative control: with ``synchronous=OFF`` a cut loses acked records, and the
    same check says so."""
    seed = _seed()
    recording, epoch = _record(tmp_path, "unsynced")
    problem, _ = _first_violation(recording, epoch, seed, tmp_path / "after-cut", 2)
    assert problem is not None and "acked but lost" in problem, problem
