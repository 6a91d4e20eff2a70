"""Closed drift windows on the device, kept until the controller has them.

The runners (one process per model) write each window as it closes into
``<results folder>/drift.db``; the daemon puts the ones not yet delivered, and the
latest of each model, in its status report, and marks them delivered once the
controller answered 200 (it stores a status report before answering). A window is
keyed by (model, reference, start): a runner restarted within a window closes it a
second time, and the two are merged (counts summed) and sent again, which the
controller stores over the first. So a window closed while the controller was
unreachable arrives when it is back, and every window is counted once.

Its own small SQLite file rather than a table of the result buffer: the buffer's
size cap, eviction and sequence numbers are about results, and a window is a few
kilobytes an hour per model. WAL and ``synchronous=FULL`` as the buffer. At most
``MAX_WINDOWS`` are kept; past that the oldest delivered, then the oldest undelivered
go (counted in ``dropped``). Standard library only, and ``sqlite3`` loaded only when a
store is opened: the daemon imports this module, and an agent that monitors no drift
keeps its idle memory.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

DRIFT_DB = "drift.db"
MAX_WINDOWS = 5000
"""About 48 hours of hourly windows for 100 models, or of one-minute windows for one."""
BUSY_TIMEOUT_S = 10.0
REPORT_BYTES = 32 * 1024
"""Drift windows in one status report, as JSON: with the rest of the report well
within the controller's request body limit (64 KiB by default)."""
LATEST_WITHIN_WINDOWS = 3
"""A model's latest window travels in every report while it is at most this many
window lengths old; a model that stopped serving drops out of the reports."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    model TEXT NOT NULL,
    reference TEXT NOT NULL,
    start INTEGER NOT NULL,
    seconds INTEGER NOT NULL,
    seen INTEGER NOT NULL,
    body TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, reference, start)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

Key = tuple[str, str, int]


class DriftWindows:
    """The windows of every model served from one results folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        import sqlite3

        self.path = folder / DRIFT_DB
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def put(self, window: dict[str, Any]) -> None:
        """Keep a closed window (a ``DriftWindow`` as JSON), merged into one of the same
        key (a runner restarted within the window), on disk before it returns."""
        key = (window["model"], window["reference"], int(window["start"]))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT body FROM windows WHERE model=? AND reference=? AND start=?", key
                ).fetchone()
                if row is not None:
                    window = _merged(json.loads(row[0]), window)
                self._db.execute(
                    "INSERT OR REPLACE INTO windows "
                    "(model, reference, start, seconds, seen, body, sent) "
                    "VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (
                        *key,
                        int(window["seconds"]),
                        int(window["seen"]),
                        json.dumps(window, separators=(",", ":")),
                    ),
                )
                self._trim()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _trim(self) -> None:
        (count,) = self._db.execute("SELECT count(*) FROM windows").fetchone()
        excess = count - MAX_WINDOWS
        if excess <= 0:
            return
        doomed = self._db.execute(
            "SELECT rowid, sent FROM windows ORDER BY sent DESC, start LIMIT ?", (excess,)
        ).fetchall()
        self._db.executemany("DELETE FROM windows WHERE rowid=?", [(r,) for r, _ in doomed])
        lost = sum(1 for _, sent in doomed if not sent)
        if lost:
            self._db.execute(
                "INSERT INTO counters VALUES ('dropped', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (lost,),
            )

    def for_report(
        self, limit: int, max_bytes: int = REPORT_BYTES, now: float | None = None
    ) -> list[dict[str, Any]]:
        """At most ``limit`` windows, ``max_bytes`` of JSON, for a status report: each
        model's latest (while recent), then the undelivered ones, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            latest = self._db.execute(
                "SELECT w.body FROM windows w JOIN (SELECT model, max(start) AS start "
                "FROM windows GROUP BY model) m ON w.model = m.model AND w.start = m.start "
                "WHERE w.start + ? * w.seconds >= ? ORDER BY w.model",
                (LATEST_WITHIN_WINDOWS + 1, now),
            ).fetchall()
            backlog = self._db.execute(
                "SELECT body FROM windows WHERE sent = 0 ORDER BY start, model LIMIT ?",
                (limit,),
            ).fetchall()
        out: dict[Key, dict[str, Any]] = {}
        size = 0
        for (body,) in [*latest, *backlog]:
            doc = json.loads(body)
            if key_of(doc) in out:
                continue
            size += len(body)
            if len(out) == limit or (out and size > max_bytes):
                break
            out[key_of(doc)] = doc
        return list(out.values())

    def delivered(self, windows: list[dict[str, Any]]) -> None:
        """The controller has these (it answered the report carrying them); a window
        merged since (a restarted runner) stays undelivered."""
        with self._lock:
            for doc in windows:
                self._db.execute(
                    "UPDATE windows SET sent = 1 WHERE model=? AND reference=? AND start=? "
                    "AND seen=?",
                    (*key_of(doc), int(doc["seen"])),
                )
            # delivered windows older than each model's latest are of no further use
            self._db.execute(
                "DELETE FROM windows WHERE sent = 1 AND start < "
                "(SELECT max(start) FROM windows w WHERE w.model = windows.model)"
            )

    def undelivered(self) -> int:
        with self._lock:
            return int(
                self._db.execute("SELECT count(*) FROM windows WHERE sent = 0").fetchone()[0]
            )

    def dropped(self) -> int:
        """Undelivered windows given up to stay within ``MAX_WINDOWS``."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def key_of(doc: dict[str, Any]) -> Key:
    return (doc["model"], doc["reference"], int(doc["start"]))


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    if len(old["counts"]) != len(new["counts"]):
        return new  # not the same layout: the newer runner's counts stand
    return {
        **new,
        "seen": old["seen"] + new["seen"],
        "samples": old["samples"] + new["samples"],
        "counts": [a + b for a, b in zip(old["counts"], new["counts"], strict=True)],
    }
