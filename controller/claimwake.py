"""Waking the devices that long-poll their QR claims when a person decides one, in
whichever worker process or replica the poll waits.

Like the rollout driver's nudge (``rollouts/nudge.py``), with one difference: every
worker holds polls, so every worker listens, not one lease holder.

- PostgreSQL (replicas on several hosts): the deciding transaction runs
  ``NOTIFY edgefleet_claims, '<claim id>'``, delivered at its commit; each worker
  LISTENs on one connection of its own, opened by its first held poll.
- SQLite (one host): each worker binds an abstract Unix datagram socket named after the
  database and its pid (no file to leave behind; the kernel frees it with the process);
  the decider, after its commit, finds them in ``/proc/net/unix`` and sends each the
  claim id. Anyone on the host may send: a datagram only makes a poll read the database
  a little earlier.

A poll registers before it reads the claim, so a decision committed after that read
always wakes it. Should a wake-up be lost anyway (the listener reconnecting), the poll
reads the database again every ``RECHECK_SECONDS`` (every ``DOWN_RECHECK_SECONDS``
while this worker's listener is down); never faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from edgefleet.wire import ClaimState, ClaimStatus

log = logging.getLogger("edgefleet.controller.claims")

CHANNEL = "edgefleet_claims"
RECHECK_SECONDS = 5.0
DOWN_RECHECK_SECONDS = 1.0
MAX_HELD = 256
"""Polls one worker holds open at once; beyond that a poll is answered at once (the agent
asks again), so held polls never take the Guard's whole in-flight allowance."""
IDLE_SECONDS = 15.0
"""A quiet PostgreSQL listener proves its connection this often."""
PROC_NET_UNIX = "/proc/net/unix"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :claim)")
T = TypeVar("T")


def _prefix(engine: Engine) -> str:
    digest = hashlib.sha256(str(engine.url.database).encode()).hexdigest()[:24]
    return f"edgefleet-claims-{digest}-"


def _postgres(engine: Engine) -> bool:
    return engine.url.get_backend_name() == "postgresql"


def announce_within(s: Session, claim_id: str) -> None:
    """Inside the transaction that decides the claim (PostgreSQL; a no-op on SQLite)."""
    if _postgres(s.get_bind()):  # type: ignore[arg-type]
        s.execute(_NOTIFY, {"claim": claim_id})


def announce_committed(engine: Engine, claim_id: str) -> None:
    """After that transaction committed (SQLite; a no-op on PostgreSQL)."""
    if _postgres(engine):
        return
    prefix = "@" + _prefix(engine)
    try:
        with open(PROC_NET_UNIX) as table:
            names = [line.split()[-1] for line in table if prefix in line]
    except OSError as exc:
        log.warning("cannot list the workers' claim sockets (%s); polls recheck on a timer", exc)
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for name in names:
            if name.startswith(prefix):
                with contextlib.suppress(OSError):  # gone, or its queue full: it rechecks
                    sock.sendto(claim_id.encode(), "\0" + name[1:])


class ClaimWaits:
    """One per worker process: held polls wait here until their claim is decided."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._up = threading.Event()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self.held = 0
        """Polls held open now."""

    async def poll(
        self, claim_id: str, hold: float, read: Callable[[], ClaimStatus]
    ) -> ClaimStatus:
        """``read()`` (in the thread pool) until the claim is no longer pending or ``hold``
        seconds have passed, waking as soon as someone decides it."""
        if hold <= 0 or self.held >= MAX_HELD:
            return await run_in_threadpool(read)
        deadline = time.monotonic() + hold
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        self.held += 1
        with self._lock:
            self._waiting.setdefault(claim_id, set()).add(entry)
        try:
            if not self._up.is_set():
                await run_in_threadpool(self._start)
            while True:
                event.clear()  # a wake-up from here on is about a read still to come
                answer = await run_in_threadpool(read)
                left = deadline - time.monotonic()
                if answer.state != ClaimState.pending or left <= 0:
                    return answer
                recheck = RECHECK_SECONDS if self._up.is_set() else DOWN_RECHECK_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, recheck))
        finally:
            self.held -= 1
            with self._lock:
                found = self._waiting.get(claim_id)
                if found is not None:
                    found.discard(entry)
                    if not found:
                        del self._waiting[claim_id]

    def _wake(self, claim_id: str) -> None:
        with self._lock:
            entries = list(self._waiting.get(claim_id, ()))
        for loop, event in entries:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    # -- the listener thread ------------------------------------------------------------

    def _start(self, wait_seconds: float = 2.0) -> None:
        """Start listening (once, at the first held poll) and give it a moment to connect;
        a poll that starts before it is up rechecks every ``DOWN_RECHECK_SECONDS``."""
        with self._lock:
            if self._thread is None and not self._stopping.is_set():
                self._wake_r, self._wake_w = os.pipe()
                self._thread = threading.Thread(
                    target=self._run, name="edgefleet-claim-waits", daemon=True
                )
                self._thread.start()
        self._up.wait(wait_seconds)

    def stop(self) -> None:
        self._stopping.set()
        thread = self._thread
        if thread is None:
            return
        os.write(self._wake_w, b"x")
        thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._thread = None

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if _postgres(self._engine):
                    self._listen_postgres()
                else:
                    self._listen_socket()
                failures = 0
            except Exception as exc:  # reconnect; polls recheck on their own meanwhile
                log.warning(
                    "claim listener failed (%s); polls recheck every %.0f s until it is back",
                    exc,
                    DOWN_RECHECK_SECONDS,
                )
            self._up.clear()
            failures += 1
            if self._stopping.wait(min(0.2 * 2**failures, 5.0)):
                return

    def _listen_postgres(self) -> None:
        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        params = {**cparams, "autocommit": True, "connect_timeout": 5, "keepalives": 1}
        with psycopg.connect(*cargs, **params) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._up.set()
            self._select(
                conn.fileno(),
                lambda: [n.payload for n in conn.notifies(timeout=0)],
                lambda: conn.execute("SELECT 1"),  # proves a quiet connection is alive
            )

    def _listen_socket(self) -> None:
        name = f"\0{_prefix(self._engine)}{os.getpid()}-{os.urandom(4).hex()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(name)
            sock.setblocking(False)

            def drain() -> list[str]:
                heard = []
                with contextlib.suppress(BlockingIOError):
                    while True:
                        heard.append(sock.recv(256).decode(errors="replace"))
                return heard

            self._up.set()
            self._select(sock.fileno(), drain, lambda: None)

    def _select(self, fd: int, drain: Callable[[], list[Any]], idle: Callable[[], Any]) -> None:
        while True:
            ready, _, _ = select.select([fd, self._wake_r], [], [], IDLE_SECONDS)
            if self._stopping.is_set():
                return
            if fd not in ready:
                idle()
                continue
            for claim_id in drain():
                self._wake(str(claim_id))
