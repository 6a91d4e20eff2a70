"""Cache invalidation between replicas: a generation counter in PostgreSQL, announced
with ``NOTIFY edgefleet_cache`` and heard by one listener thread per worker process.

The contract is the file epoch's (``cachebus``): a writer calls ``bump()`` after its
transaction commits, every request calls ``check()``, and subscribers drop their
caches when it fires. Here ``bump()`` increments the one row of ``cachegeneration``
and notifies in the same short transaction, so the notification is delivered exactly
when the new generation is visible. ``check()`` reads the monotonic clock (no system
call on Linux) and two numbers in memory; it never touches the database.

Notifications are asynchronous, and a device may hear of a change (a new revision in
a status ack, say) from replica A and ask replica B a millisecond later. So ``bump()``
returns only once every live listener has acknowledged the new generation (each
records, in ``cachelistener``, the newest generation it has acted on, *after* moving
the number ``check()`` reads): when an operator's decommission or profile apply
returns, every connected replica has already let go of the old view. A listener
counts as live while its database session exists (``pg_stat_activity``, matched on
pid and start time); one that is alive but wedged costs the writer at most
``ack_timeout_seconds`` and is caught by its lease (below).

What the listener guarantees, and how:

- A notification makes the listener read the counter, and the caches drop when it
  moved. Several deployments (or test schemas) may share one database and so one
  channel: a stranger's notification costs one read, never a drop, and the payload
  (the new generation) is informational only.
- While the listener is not connected the caches are unusable: ``check()`` drops
  them on every request, so each request reads the database. A silently dead
  connection is caught by a lease: the listener proves its connection with a round
  trip (reading the counter) whenever it has been quiet for ``poll_seconds``, and
  ``check()`` treats the caches as unusable once ``lease_seconds`` pass without proof.
- After every (re)connect the listener LISTENs first, then reads the counter, then
  forces one drop: whatever committed while it was away (notifications it missed)
  was read from the database or is dropped now.

The cost of that choice: with the database unreachable the device API cannot answer
from memory either, because no replica may answer from a view it cannot prove fresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Engine

log = logging.getLogger("edgefleet.controller.cachebus")

CHANNEL = "edgefleet_cache"
TABLE = "cachegeneration"
LISTENER_NAME = "edgefleet-cachebus"
"""``application_name`` of the listener connections, followed by the worker's pid."""

_BUMP = text(
    f"INSERT INTO {TABLE} (id, generation) VALUES (1, 1) "
    f"ON CONFLICT (id) DO UPDATE SET generation = {TABLE}.generation + 1 "
    "RETURNING generation"
)
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
_READ = f"SELECT generation FROM {TABLE} WHERE id = 1"
_LIVE = (
    "EXISTS (SELECT 1 FROM pg_stat_activity a "
    "WHERE a.pid = l.backend_pid AND a.backend_start = l.backend_start)"
)
_BEHIND = text(f"SELECT l.id FROM cachelistener l WHERE l.generation < :generation AND {_LIVE}")
_FORGET_DEAD = f"DELETE FROM cachelistener l WHERE NOT {_LIVE}"
_ACK = (
    "INSERT INTO cachelistener (id, backend_pid, backend_start, generation) "
    "SELECT %(id)s, pid, backend_start, %(generation)s FROM pg_stat_activity "
    "WHERE pid = pg_backend_pid() "
    "ON CONFLICT (id) DO UPDATE SET backend_pid = excluded.backend_pid, "
    "backend_start = excluded.backend_start, generation = excluded.generation"
)
_RESIGN = "DELETE FROM cachelistener WHERE id = %(id)s"


class PgEpoch:
    def __init__(
        self,
        engine: Engine,
        *,
        poll_seconds: float = 1.0,
        lease_seconds: float = 3.0,
        retry_seconds: float = 0.2,
        max_retry_seconds: float = 2.0,
        ack_timeout_seconds: float = 1.0,
    ) -> None:
        self._engine = engine
        self._poll = poll_seconds
        self._lease = lease_seconds
        self.retry_seconds = retry_seconds
        """First wait before reconnecting; doubled per failed attempt up to the maximum."""
        self.max_retry_seconds = max_retry_seconds
        self.ack_timeout_seconds = ack_timeout_seconds
        self._id = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"[-128:]
        self._acked: int | None = None
        self._listeners: list[Callable[[], None]] = []
        self._changes = 0
        """Moved by the listener thread when the counter moved and on every (re)connect."""
        self._seen: int | None = None
        """``_changes`` as of the last drop; None while the caches are unusable."""
        self._fresh_until = 0.0
        """Monotonic deadline of the listener's last proof of a live connection."""
        self.generation: int | None = None
        """The counter as last read or bumped here (for logs, metrics and tests)."""
        self.connects = 0
        self._up = threading.Event()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    # -- the epoch contract -------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def bump(self) -> None:
        """Announce a committed change to every worker of every replica, this one at once;
        return when every live listener has acted on it."""
        try:
            with self._engine.begin() as conn:
                generation = conn.execute(_BUMP).scalar_one()
                conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": str(generation)})
            # Our own notification then finds the counter where we left it: no second drop.
            self.generation = max(self.generation or 0, generation)
        finally:
            self._fire()
        self._await_acks(generation)

    def _await_acks(self, generation: int) -> None:
        deadline = time.monotonic() + self.ack_timeout_seconds
        pause = 0.0005
        while True:
            with self._engine.connect() as conn:
                behind = conn.execute(_BEHIND, {"generation": generation}).scalars().all()
            if not behind:
                return
            if time.monotonic() > deadline:
                log.warning(
                    "cache generation %d: %d listener(s) did not acknowledge within %.1f s "
                    "(%s); their leases expire on their own",
                    generation,
                    len(behind),
                    self.ack_timeout_seconds,
                    ", ".join(behind[:5]),
                )
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def check(self) -> None:
        """Drop this worker's caches if anyone announced a change, or if the listener
        cannot vouch for them (disconnected, or silent past its lease)."""
        if time.monotonic() > self._fresh_until:
            self._seen = None
            self._fire()
            return
        changes = self._changes
        if changes != self._seen:
            self._seen = changes
            self._fire()

    @property
    def connected(self) -> bool:
        return time.monotonic() <= self._fresh_until

    def start(self, wait_seconds: float = 5.0) -> None:
        """Start the listener thread (once per worker process, from the app's lifespan)
        and give it a moment to connect, so the worker starts with usable caches."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=LISTENER_NAME, daemon=True)
        self._thread.start()
        if not self._up.wait(wait_seconds):
            log.warning(
                "cache listener not connected after %.0f s; answering from the database "
                "until it is",
                wait_seconds,
            )

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._thread = None
        self._fresh_until = 0.0

    def _fire(self) -> None:
        for listener in self._listeners:
            listener()

    # -- the listener thread ------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(_FORGET_DEAD)
                    self.generation = self._read(conn)
                    # Anything may have committed while we were away: one forced drop.
                    self._changes += 1
                    self._ack(conn, self.generation)
                    self._prove()
                    self.connects += 1
                    self._up.set()
                    if self.connects > 1:
                        log.warning("cache listener reconnected; caches dropped")
                    failures = 0
                    self._listen(conn)
            except Exception as exc:  # any failure: caches unusable, reconnect
                self._fresh_until = 0.0
                if self._stopping.is_set():
                    break
                log.warning(
                    "cache listener lost its connection (%s); answering from the database "
                    "until it is back",
                    _first_line(exc),
                    exc_info=not isinstance(exc, psycopg.Error | OSError),
                )
            self._fresh_until = 0.0
            delay = min(
                self.retry_seconds * 2**failures, max(self.retry_seconds, self.max_retry_seconds)
            )
            failures += 1
            if self._stopping.wait(delay):
                break

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        sock = conn.fileno()
        while True:
            self._drain(conn)  # notifications that arrived during our own queries
            ready, _, _ = select.select([sock, self._wake_r], [], [], self._poll)
            if self._stopping.is_set():
                with contextlib.suppress(psycopg.Error):
                    conn.execute(_RESIGN, {"id": self._id})
                return
            if sock in ready:
                self._drain(conn)
            else:  # quiet: prove the connection, and catch anything missed
                self._learn(conn, self._read(conn))
            self._prove()

    def _drain(self, conn: psycopg.Connection[Any]) -> None:
        heard = False
        for _notify in conn.notifies(timeout=0):
            heard = True
        if heard:
            self._learn(conn, self._read(conn))

    def _learn(self, conn: psycopg.Connection[Any], generation: int) -> None:
        if generation != self.generation:
            self.generation = generation
            self._changes += 1
        if generation != self._acked:  # only once check() will see the move
            self._ack(conn, generation)

    def _ack(self, conn: psycopg.Connection[Any], generation: int) -> None:
        conn.execute(_ACK, {"id": self._id, "generation": generation})
        self._acked = generation

    def _read(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(_READ).fetchone()
        return int(row[0]) if row else 0

    def _prove(self) -> None:
        self._fresh_until = time.monotonic() + self._lease

    def _connect(self) -> psycopg.Connection[Any]:
        """A dedicated connection with the engine's own parameters (host, database,
        search path), in autocommit so notifications arrive between statements."""
        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        params = {
            **cparams,
            "autocommit": True,
            "application_name": f"{LISTENER_NAME}/{os.getpid()}",
            "connect_timeout": 5,
            # A peer that vanished without a word is noticed by TCP, not after minutes.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
        }
        return psycopg.connect(*cargs, **params)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
