"""Waking the rollout driver when a device's outcome is stored, whichever process
stored it: the engine reacts to status reports as they arrive instead of polling.

- SQLite (one host): the driver binds an abstract Unix datagram socket named after the
  database file (no path to outgrow or leave behind); a worker that stored an outcome
  sends it one byte after its commit. Anyone on the host may send: a byte only makes
  the driver look at the database a little earlier.
- PostgreSQL (replicas on several hosts): ``NOTIFY edgefleet_rollouts`` in the
  storing transaction, delivered at its commit; the driver LISTENs on a connection of
  its own while it holds the lease.

A nudge says which rollout and what became of its device (``7 succeeded``), so the
driver need not step for a success that changes nothing at the wave's level (see
``driver.py``); any other nudge (``!``) asks for a step. A lost nudge costs at most
one timer tick (``rollout_tick_seconds``).
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import socket
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

CHANNEL = "edgefleet_rollouts"
ANY = "!"
"""A nudge that asks for a step whatever the driver knows."""
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :news)")


def _address(engine: Engine) -> str:
    digest = hashlib.sha256(str(engine.url.database).encode()).hexdigest()[:24]
    return f"\0edgefleet-rollouts-{digest}"


class Nudge:
    """The sending side, used by every worker."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.url.get_backend_name() == "postgresql"
        self._address = _address(engine)
        self._sock: socket.socket | None = None

    def within(self, s: Session, news: str) -> None:
        """Call inside the transaction that stored an outcome."""
        if self._postgres:
            s.execute(_NOTIFY, {"news": news})

    def after(self, news: str) -> None:
        """Call after that transaction committed."""
        if self._postgres:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        with contextlib.suppress(OSError):  # no driver listening, or its queue is full
            self._sock.sendto(news.encode(), self._address)

    def now(self) -> None:
        """Outside any transaction: an operator's action, or a driver told to stop."""
        if self._postgres:
            with self._engine.begin() as conn:
                conn.execute(_NOTIFY, {"news": ANY})
        else:
            self.after(ANY)


class Waiter:
    """The driver's side: ``wait`` returns early when nudged."""

    def __init__(self, engine: Engine) -> None:
        self._conn: Any = None
        self._sock: socket.socket | None = None
        if engine.url.get_backend_name() == "postgresql":
            url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(url, autocommit=True)
            self._conn.execute(f"LISTEN {CHANNEL}")
        else:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.bind(_address(engine))  # freed by the kernel when its holder dies
            self._sock.setblocking(False)

    def wait(self, timeout: float) -> list[str]:
        """Sleep up to ``timeout`` seconds or until nudged; the nudges received."""
        fd = self._conn.fileno() if self._conn is not None else self._sock.fileno()  # type: ignore[union-attr]
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        return self.drain() if ready else []

    def drain(self) -> list[str]:
        """Every nudge waiting, without blocking."""
        if self._conn is not None:
            return [n.payload for n in self._conn.notifies(timeout=0, stop_after=None)]
        assert self._sock is not None
        found = []
        with contextlib.suppress(BlockingIOError):
            while True:
                found.append(self._sock.recv(256).decode(errors="replace"))
        return found

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._sock is not None:
            self._sock.close()
