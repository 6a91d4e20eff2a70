"""Closed shadow-comparison windows on the device, kept until the controller has them.

The runners write each window as it closes into ``<results folder>/shadow.db``, beside
the drift windows; the daemon puts the ended ones not yet delivered in its status
report (at most ``MAX_SHADOW_WINDOWS``, oldest first) and marks them delivered once the
controller answered 200. A window is keyed by (key, model, candidate digest, start): a
runner restarted within a window (a plan changed, a crash) stores its part again and
the parts are merged (counts summed). A window is reported only once its end has
passed by ``SETTLE_S``, so its parts are normally merged before it leaves; a part that
still comes later (a runner that was down) is merged into the delivered row, which is
kept ``KEEP_DELIVERED_S`` for that, and the whole window is sent again: the controller
stores a window over an earlier one of the same key.

Its own small SQLite file (WAL, ``synchronous=FULL``), at most ``MAX_WINDOWS`` rows;
past that the oldest go, delivered ones first, and undelivered ones lost are counted in
``dropped``. Standard library only, ``sqlite3`` loaded only when a store is opened: an
agent that runs no shadow keeps its idle memory.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

SHADOW_DB = "shadow.db"
MAX_WINDOWS = 2000
"""About a week of five-minute windows for one model, two days for four."""
BUSY_TIMEOUT_S = 10.0
SETTLE_S = 10.0
"""A window is reported this long after its end: the runners close a window within
five seconds of its end (their timer), and a stopped one stores its part as it stops."""
KEEP_DELIVERED_S = 3600.0
"""A delivered window's row stays this long after its end, for a late part to merge into."""
REPORT_BYTES = 16 * 1024
"""Shadow windows in one status report, as JSON (about 450 bytes each)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    candidate TEXT NOT NULL,
    start INTEGER NOT NULL,
    ends INTEGER NOT NULL,
    body TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, model, candidate, start)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

Key = tuple[str, str, str, int]
SUMMED = ("compared", "skipped", "errors", "top1_total", "top1_agree", "abs_diff_sum")


class ShadowWindows:
    """The shadow windows of every model served from one results folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        import sqlite3

        self.path = folder / SHADOW_DB
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def put(self, window: dict[str, Any]) -> None:
        """Keep a closed window (a ``ShadowWindow`` as JSON), merged into a part of it
        stored before, on disk before it returns."""
        key = key_of(window)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT body FROM windows WHERE key=? AND model=? AND candidate=? AND start=?",
                    key,
                ).fetchone()
                if row is not None:
                    window = merged(json.loads(row[0]), window)
                self._db.execute(
                    "INSERT OR REPLACE INTO windows (key, model, candidate, start, ends, body, "
                    "sent) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (
                        *key,
                        int(window["start"]) + int(window["seconds"]),
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
        """At most ``limit`` undelivered windows that ended ``SETTLE_S`` ago, within
        ``max_bytes`` of JSON, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM windows WHERE sent = 0 AND ends + ? <= ? "
                "ORDER BY start, key, model, candidate LIMIT ?",
                (SETTLE_S, now, limit),
            ).fetchall()
        out: list[dict[str, Any]] = []
        size = 0
        for (body,) in rows:
            size += len(body)
            if out and size > max_bytes:
                break
            out.append(json.loads(body))
        return out

    def delivered(self, windows: list[dict[str, Any]], now: float | None = None) -> None:
        """The controller has these; a window merged since stays undelivered. Delivered
        rows are deleted ``KEEP_DELIVERED_S`` after their end."""
        now = time.time() if now is None else now
        with self._lock:
            for doc in windows:
                self._db.execute(
                    "UPDATE windows SET sent = 1 WHERE key=? AND model=? AND candidate=? "
                    "AND start=? AND json_extract(body, '$.compared')=? "
                    "AND json_extract(body, '$.skipped')=? AND json_extract(body, '$.errors')=?",
                    (*key_of(doc), doc["compared"], doc["skipped"], doc["errors"]),
                )
            self._db.execute(
                "DELETE FROM windows WHERE sent = 1 AND ends + ? < ?", (KEEP_DELIVERED_S, now)
            )

    def forget(self, doc: dict[str, Any]) -> None:
        """Delete a window that cannot be reported (it fails the wire's checks), so it
        does not hold back the ones after it."""
        with self._lock:
            self._db.execute(
                "DELETE FROM windows WHERE key=? AND model=? AND candidate=? AND start=?",
                key_of(doc),
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
    return (doc["key"], doc["model"], doc["candidate_digest"], int(doc["start"]))


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two parts of one window: counts summed, the larger maximum, and the latencies of
    the part with more compared calls (percentiles do not add up)."""
    out = {**new, **{name: old[name] + new[name] for name in SUMMED}}
    out["abs_diff_max"] = max(old["abs_diff_max"], new["abs_diff_max"])
    if old["compared"] > new["compared"]:
        out["active_latency"] = old["active_latency"]
        out["candidate_latency"] = old["candidate_latency"]
    return out
