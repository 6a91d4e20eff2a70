"""The agent's durable result queue: SQLite in WAL mode with ``synchronous=FULL``.

``append`` returning is the local ack: the record is in a committed, fsynced
transaction. Producers calling at once share one commit (group commit, see
:meth:`Buffer._submit`), so the fsync is paid per batch, not per record. A record's
key is (device id, buffer epoch, sequence): the epoch is drawn when the database is
created, so a device whose buffer was lost starts a new series instead of reusing
sequences the controller already holds. Sequences only grow (``AUTOINCREMENT``).

The size cap is ``max_page_count``; before the file reaches it the buffer evicts by
policy and counts each drop by reason. A reserve file beside the database is given
back when the disk itself is full, so that the eviction's delete can be written.
Standard library only: the runner child and the daemon both open it.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from edgefleet.errors import EdgefleetError

MAX_PAYLOAD_BYTES = 256 * 1024
"""Largest payload stored (JSON as compact UTF-8, or binary): bigger ones belong in a file."""

DEFAULT_CAP_BYTES = 512 * 1024 * 1024
RESERVE_BYTES = 4 * 1024 * 1024
"""Given back on a full disk: room for the WAL of an eviction's delete."""

FILL = 0.75
"""Evict once stored bytes pass this share of the cap: b-tree pages, the index and
free space take the rest of ``max_page_count``."""

ROW_OVERHEAD = 64
"""Bytes counted per row beside its payload (key, timestamps, digest, b-tree cell)."""

SLACK = 64
"""An eviction frees this share of the cap more than it must, so a full buffer does
not evict on every commit."""

WAL_PAGES = 1000
"""Checkpoint the WAL every 1000 pages (SQLite's default, 4 MiB at 4 KiB pages): the
WAL, and what a checkpoint may add to the database file, stay inside LOW_DISK_BYTES.
Checkpointing more often costs a third of the ingest rate (more fsyncs)."""

LOW_DISK_BYTES = 8 * 1024 * 1024
"""With less free space than this on its file system, the buffer is full whatever its
cap: it stores only in the pages that evictions (and the uploader's deletes) freed in
its file, which stops growing, so its WAL can still be checkpointed and reused and a
delete needs no new space. Without it, a disk filled to the last block takes every
later write, deletes included, once the reserve is spent: the buffer could neither
drain nor store."""

UNENROLLED = "unenrolled"
"""The device id in the key until the agent is enrolled and says which it is."""

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    wall REAL NOT NULL,
    mono REAL NOT NULL,
    boot_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    slot TEXT,
    revision INTEGER,
    size INTEGER NOT NULL,
    payload NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0), depth INTEGER, bytes INTEGER
);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS drops (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS results_in AFTER INSERT ON results BEGIN
    UPDATE totals SET depth = depth + 1, bytes = bytes + new.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS results_out AFTER DELETE ON results BEGIN
    UPDATE totals SET depth = depth - 1, bytes = bytes - old.size WHERE id = 0;
END;
"""
# Totals are kept by triggers so that stats and the cap cost O(1) and stay right
# while another process (the uploader) deletes.


class Policy(enum.StrEnum):
    """What a full buffer gives up; the name is also the drop reason counted."""

    DROP_OLDEST = "oldest"
    DROP_NEWEST = "newest"
    SAMPLE = "sampled"
    """Thin the oldest records to one in two: a backlog keeps its whole time span."""

    @classmethod
    def of_profile(cls, name: str) -> Policy:
        """The profile's words (``drop_oldest``, ``drop_newest``, ``sample``)."""
        words = {
            "drop_oldest": cls.DROP_OLDEST,
            "drop_newest": cls.DROP_NEWEST,
            "sample": cls.SAMPLE,
        }
        return words.get(name) or cls(name)


class RecordTooLarge(EdgefleetError):
    default_code = "record_too_large"


class BufferFull(EdgefleetError):
    default_code = "buffer_full"


class Record(TypedDict):
    """What a producer hands over; the buffer adds the key and the timestamps."""

    payload: dict[str, Any] | bytes
    digest: NotRequired[str]
    slot: NotRequired[str | None]
    revision: NotRequired[int | None]


@dataclass(frozen=True)
class Row:
    seq: int
    epoch: str
    wall: float
    mono: float
    boot_id: str
    digest: str
    slot: str | None
    revision: int | None
    size: int
    payload: dict[str, Any] | bytes


@dataclass(frozen=True)
class Stats:
    """As ``edgefleet.wire.BufferStats`` carries it."""

    depth: int
    bytes: int
    oldest_age_seconds: float | None
    drops: dict[str, int]
    cap_bytes: int = 0
    capacity_hours: float | None = None
    """How long the cap holds results at the configured rate and the rows' mean size."""


RawRow = tuple[int, float, float, str, str, "str | None", "int | None", int, "str | bytes"]
"""(seq, wall, mono, boot_id, digest, slot, revision, size, payload as stored): JSON
payloads stay text, so the uploader sends them without decoding them."""


@dataclass
class _Job:
    rows: list[tuple[Any, ...]]
    done: bool = False
    seqs: list[int] = field(default_factory=list)
    error: Exception | None = None


class Buffer:
    """One database file; safe to share between threads, and between processes
    (one producer process, one uploader process, through SQLite's own locks)."""

    def __init__(
        self,
        path: Path,
        *,
        cap_bytes: int = DEFAULT_CAP_BYTES,
        policy: Policy = Policy.DROP_OLDEST,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        self.path = path
        self.policy = policy
        self.cap_bytes = cap_bytes
        self.max_payload_bytes = max_payload_bytes
        self._reserve = path.with_name(path.name + ".reserve")
        self._reserve_bytes = reserve_bytes
        self._boot_id = boot_id()
        self._lock = threading.Lock()  # the connection and the commit
        self._pending_lock = threading.Lock()
        self._pending: list[_Job] = []
        self._db = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        epoch = os.urandom(8).hex()
        self._db.executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} INSERT OR IGNORE INTO meta VALUES ('epoch', '{epoch}');"
            f"INSERT OR IGNORE INTO meta VALUES ('device', '{UNENROLLED}'); COMMIT;"
        )
        self.epoch: str = self._meta("epoch") or epoch
        self.rate: float | None = None
        self._mean_row = 0.0
        """The stored rows' mean size when last seen: an emptied buffer still knows it."""
        self._pages = 0
        self._load_config()
        self._keep_reserve()

    def configure(self, cap_bytes: int, policy: Policy, rate: float | None = None) -> None:
        """Set the cap, policy and expected rate (the profile's) for every process that
        opens this buffer: producers read them at each commit."""
        values = {"cap": str(cap_bytes), "policy": policy.value, "rate": str(rate or "")}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                "excluded.value",
                values.items(),
            )
            self._db.execute("COMMIT")
            self._load_config()

    def _load_config(self) -> None:
        """Apply the configuration stored by :meth:`configure`, if any; the caller holds
        the connection (at setup, or inside a write transaction)."""
        config = dict(
            self._db.execute("SELECT key, value FROM meta WHERE key IN ('cap', 'policy', 'rate')")
        )
        if "policy" in config:
            self.policy = Policy(config["policy"])
        self.rate = float(config["rate"]) if config.get("rate") else None
        cap = int(config.get("cap") or self.cap_bytes)
        if cap != self.cap_bytes or not self._pages:
            self.cap_bytes = cap
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
            self._pages = max(cap // page_size, 64)
            self._db.execute(f"PRAGMA max_page_count={self._pages}")

    @property
    def device(self) -> str:
        """The key's device id: :data:`UNENROLLED` until :meth:`bind_device`."""
        with self._lock:
            return self._meta("device") or UNENROLLED

    def bind_device(self, device_id: str) -> None:
        """Name the device once enrolled; records kept from before are its too."""
        with self._lock:
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'device'", (device_id,))

    # -- producers ----------------------------------------------------------------

    def append(self, record: Record) -> int:
        """Store one record; returns its sequence once it is on disk."""
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[Record]) -> list[int]:
        """Store records in one transaction; their sequences, in order, once on disk.
        Raises RecordTooLarge (nothing stored) or BufferFull (policy ``newest``)."""
        rows = [self._row(r) for r in records]
        return self._submit(_Job(rows)) if rows else []

    def _row(self, record: Record) -> tuple[Any, ...]:
        payload = record["payload"]
        if isinstance(payload, bytes | bytearray | memoryview):
            value: str | bytes = bytes(payload)
            size = len(value)
        else:
            value = json.dumps(payload, separators=(",", ":"), allow_nan=False)
            size = len(value.encode())
        if size > self.max_payload_bytes:
            raise RecordTooLarge(
                f"result payload of {size} bytes is over the buffer's limit of "
                f"{self.max_payload_bytes}: nothing was stored; send large outputs "
                "(images, tensors) as files and keep a reference in the result"
            )
        return (
            time.time(),
            monotonic(),
            self._boot_id,
            record.get("digest", ""),
            record.get("slot"),
            record.get("revision"),
            size + ROW_OVERHEAD,
            value,
        )

    def _submit(self, job: _Job) -> list[int]:
        """Group commit: whoever holds the commit lock writes every job queued so far
        in one transaction; a caller whose job was written meanwhile just returns."""
        with self._pending_lock:
            self._pending.append(job)
        with self._lock:
            if not job.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._write(batch)
        if job.error is not None:
            raise job.error
        return job.seqs

    def _write(self, batch: list[_Job]) -> None:
        try:
            try:
                self._commit(batch)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                self._rollback()
                self._reserve.unlink(missing_ok=True)  # a full disk: room for the delete
                try:
                    self._commit(batch, shed=True)
                except sqlite3.OperationalError as again:
                    if again.sqlite_errorcode != sqlite3.SQLITE_FULL:
                        raise
                    raise BufferFull(
                        f"cannot store results in {self.path}: the disk is full even after "
                        "evicting; free space on that file system"
                    ) from again
                self._keep_reserve()
        except Exception as exc:
            self._rollback()
            for job in batch:
                job.seqs, job.error = [], exc
        finally:
            for job in batch:
                job.done = True

    def _commit(self, batch: list[_Job], shed: bool = False) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        self._load_config()
        incoming = sum(row[6] for job in batch for row in job.rows)
        stored = db.execute("SELECT bytes FROM totals").fetchone()[0]
        over = stored + incoming - int(self.cap_bytes * FILL)
        slack = self.cap_bytes // SLACK
        if _free_bytes(self.path.parent) < LOW_DISK_BYTES:
            # The disk is the limit: store in the pages evictions freed, not in new ones.
            pages, free, page_size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in _GEOMETRY)
            used = (pages - free) * page_size
            room = free * page_size * stored // used if used else free * page_size
            over = max(over, incoming - room)
            slack = min(slack, pages * page_size // SLACK)
        if shed:
            over = max(over, stored // 8, 1)
        for job in batch:
            job.seqs, job.error = [], None
            if over > 0 and self.policy is Policy.DROP_NEWEST:
                self._count_drop(len(job.rows))
                job.error = BufferFull(
                    f"the result buffer {self.path} is full ({self.cap_bytes} bytes, policy "
                    f"drop newest): {len(job.rows)} result(s) dropped; check the uploader's "
                    "connection or raise the buffer's size cap"
                )
                continue
            if over > 0:
                over -= self._evict(over + slack)
            for row in job.rows:
                cursor = db.execute(
                    "INSERT INTO results (wall, mono, boot_id, digest, slot, revision, size, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                job.seqs.append(cursor.lastrowid or 0)
        db.execute("COMMIT")

    def _evict(self, need: int) -> int:
        """Frees at least ``need`` bytes by policy (fewer only if the buffer empties)."""
        step = 2 if self.policy is Policy.SAMPLE else 1
        cursor = self._db.execute("SELECT seq, size FROM results ORDER BY seq")
        doomed: list[int] = []
        freed = 0
        for i, (seq, size) in enumerate(cursor):
            if freed >= need:
                break
            if i % step == step - 1:
                doomed.append(seq)
                freed += size
        cursor.close()
        self._db.executemany("DELETE FROM results WHERE seq = ?", ((s,) for s in doomed))
        self._count_drop(len(doomed))
        return freed

    def _count_drop(self, count: int) -> None:
        if count:
            self._db.execute(
                "INSERT INTO drops VALUES (?, ?) ON CONFLICT (reason) "
                "DO UPDATE SET count = count + excluded.count",
                (self.policy.value, count),
            )

    # -- the uploader -------------------------------------------------------------

    def read_from(self, seq: int, limit_count: int = 1000, limit_bytes: int = 1 << 20) -> list[Row]:
        """Records with sequence >= ``seq``, in order, up to either limit (at least one)."""
        return [
            Row(s, self.epoch, wall, mono, boot, digest, slot, rev, size, _decoded(payload))
            for s, wall, mono, boot, digest, slot, rev, size, payload in self.read_raw(
                seq, limit_count, limit_bytes
            )
        ]

    def read_raw(
        self, seq: int, limit_count: int = 1000, limit_bytes: int = 1 << 20
    ) -> list[RawRow]:
        """As :meth:`read_from`, with payloads as stored (JSON text, or bytes)."""
        rows: list[RawRow] = []
        total = 0
        with self._lock:
            cursor = self._db.execute(
                "SELECT seq, wall, mono, boot_id, digest, slot, revision, size, payload "
                "FROM results WHERE seq >= ? ORDER BY seq LIMIT ?",
                (seq, limit_count),
            )
            for row in cursor:
                if rows and total + row[7] > limit_bytes:
                    break
                total += row[7]
                rows.append(row)
            cursor.close()
        return rows

    @property
    def acked(self) -> int:
        """The highest sequence the controller acked (and this buffer deleted through)."""
        with self._lock:
            return int(self._meta("acked") or 0)

    def delete_through(self, seq: int) -> int:
        """Forget what the controller acked (sequences <= ``seq``); returns how many.
        The ack is kept with the delete, in the same transaction."""
        with self._lock:
            try:
                return self._delete_through(seq)
            except sqlite3.OperationalError as exc:
                self._rollback()
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                self._reserve.unlink(missing_ok=True)
                return self._delete_through(seq)
            finally:
                self._keep_reserve()

    def _delete_through(self, seq: int) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        count = db.execute("DELETE FROM results WHERE seq <= ?", (seq,)).rowcount
        db.execute(
            "INSERT INTO meta VALUES ('acked', ?) ON CONFLICT (key) DO UPDATE SET value = "
            "max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
            (str(seq),),
        )
        db.execute("COMMIT")
        return int(count)

    def stats(self) -> Stats:
        with self._lock:
            self._load_config()
            depth, size = self._db.execute("SELECT depth, bytes FROM totals").fetchone()
            oldest = self._db.execute("SELECT wall FROM results ORDER BY seq LIMIT 1").fetchone()
            drops = dict(self._db.execute("SELECT reason, count FROM drops ORDER BY reason"))
        age = max(time.time() - oldest[0], 0.0) if oldest else None
        if depth:
            self._mean_row = size / depth
        hours = None
        if self.rate and self._mean_row:
            hours = self.cap_bytes * FILL / (self.rate * self._mean_row) / 3600
        return Stats(
            depth=depth,
            bytes=size,
            oldest_age_seconds=age,
            drops=drops,
            cap_bytes=self.cap_bytes,
            capacity_hours=hours,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _keep_reserve(self) -> None:
        """Best effort: a full disk is exactly when it cannot be made, and that is fine."""
        if self._reserve_bytes <= 0 or self._reserve.exists():
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        try:
            os.posix_fallocate(fd, 0, self._reserve_bytes)
        except OSError:
            os.close(fd)
            self._reserve.unlink(missing_ok=True)
            return
        os.close(fd)


_GEOMETRY = ("page_count", "freelist_count", "page_size")


def _free_bytes(folder: Path) -> int:
    """Space left to unprivileged writers (root's reserved blocks are the system's)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def _decoded(payload: str | bytes) -> dict[str, Any] | bytes:
    return payload if isinstance(payload, bytes) else json.loads(payload)  # type: ignore[no-any-return]


def boot_id() -> str:
    """Monotonic timestamps compare only within one boot; this says which boot."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


def monotonic() -> float:
    """Time since boot, counting suspend where the system can (``CLOCK_BOOTTIME``)."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime(clock)
