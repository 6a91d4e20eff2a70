"""Spent device assertions, recorded in group commits.

A token exchange must record its assertion's ``jti`` durably before it answers: after a
crash a replayed assertion would otherwise buy a second token. On SQLite with
``synchronous=FULL`` every commit waits for the disk, and one commit per exchange made a
returning fleet (every device's first token after a restart or an outage) queue behind
the disk, a few hundred a second at most. Exchanges that arrive together now share one
transaction: a writer thread takes everything waiting, inserts it in one statement that
returns the keys that were new, commits once, and answers each waiter.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from edgefleet.controller.db import writing
from edgefleet.controller.models import UsedAssertion

_TABLE = UsedAssertion.__table__  # type: ignore[attr-defined]
MAX_BATCH = 1000
"""Keys per transaction (two bound values each: far below SQLite's limit)."""
PURGE_EVERY_SECONDS = 60.0
"""How often expired keys are deleted, in the writer's own transaction."""


class AssertionLedger:
    """Records assertion keys once; a key recorded before is reported as a replay.

    The writer thread starts with the first key and ends after ``idle_seconds`` with
    nothing to write, so an idle controller (or a test's hundred short-lived apps) keeps
    no thread.
    """

    def __init__(self, engine: Engine, idle_seconds: float = 5.0) -> None:
        self._engine = engine
        self._idle = idle_seconds
        self._queue: queue.SimpleQueue[tuple[str, datetime, Future[bool]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._purged_at = time.monotonic()

    def spend(self, key: str, until: float) -> Future[bool]:
        """Record ``key`` (kept until the Unix time ``until``). The future is True when
        the key is new and now durably recorded, False when it was recorded before; it
        carries the database's exception if the write failed."""
        answer: Future[bool] = Future()
        self._queue.put((key[:200], datetime.fromtimestamp(until, UTC), answer))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="assertion-ledger", daemon=True
                )
                self._thread.start()
        return answer

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=self._idle)]
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list[tuple[str, datetime, Future[bool]]]) -> None:
        rows: dict[str, datetime] = {}
        for key, until, _answer in batch:
            rows.setdefault(key, until)
        try:
            with writing(self._engine) as conn:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                stmt = (
                    dialect.insert(_TABLE)
                    .values([{"jti": k, "expires_at": u} for k, u in rows.items()])
                    .on_conflict_do_nothing()
                    .returning(_TABLE.c.jti)
                )
                new = set(conn.execute(stmt).scalars())
                if time.monotonic() - self._purged_at > PURGE_EVERY_SECONDS:
                    self._purged_at = time.monotonic()
                    cutoff = datetime.now(UTC) - timedelta(seconds=60)
                    conn.execute(delete(_TABLE).where(_TABLE.c.expires_at < cutoff))
        except Exception as exc:
            for _key, _until, answer in batch:
                answer.set_exception(exc)
            return
        for key, _until, answer in batch:
            answer.set_result(key in new)
            new.discard(key)  # the same key twice in one batch: the second is a replay
