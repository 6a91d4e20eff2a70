"""Which process drives rollouts: a lease row in the database, so it works the same on
SQLite (one host, several worker processes) and PostgreSQL (replicas).

The holder renews it well before it expires; a dead holder's successor takes it once
it has expired. Every step the engine takes checks the lease inside its own
transaction and locks it until the step commits (``fence``): a holder that stalled
past its lease (and was replaced) finds the row taken and rolls its step back, and a
successor cannot take the lease while a step is committing, so two drivers never both
commit a step.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from edgefleet.controller.db import reading, writing
from edgefleet.controller.models import EngineLease

NAME = "rollouts"


class LostLease(RuntimeError):
    """Another process holds the lease now; this one must stop driving."""


def holder_name() -> str:
    """``host:pid``: which process of which machine drives, for operators and logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    def __init__(self, engine: Engine, seconds: float, holder: str | None = None) -> None:
        self.engine = engine
        self.seconds = seconds
        self.holder = holder or holder_name()

    def acquire(self) -> bool:
        """Take or renew the lease; False while another live holder has it."""
        now = time.time()
        with writing(self.engine) as conn:
            taken = conn.execute(
                update(EngineLease)
                .where(
                    EngineLease.name == NAME,
                    (EngineLease.holder == self.holder) | (EngineLease.expires_at < now),  # type: ignore[arg-type]
                )
                .values(holder=self.holder, expires_at=now + self.seconds, acquired_at=now)
            ).rowcount
        return bool(taken)

    def held(self) -> tuple[Any, ...]:
        """Conditions on ``EngineLease`` that hold while this process has the lease: to
        join in a statement that locks the lease with the rows it reads."""
        return (
            EngineLease.name == NAME,
            EngineLease.holder == self.holder,
            EngineLease.expires_at >= time.time(),  # type: ignore[operator]
        )

    def fence(self, s: Session | Connection) -> None:
        """Check, inside the caller's transaction, that this process still holds the
        lease, and keep it from changing hands until that transaction ends (a row lock
        on PostgreSQL; SQLite's one writer at a time); else raise LostLease. A read, so
        a step that changes nothing writes nothing (``acquire`` renews)."""
        held = s.execute(  # type: ignore[call-overload]
            select(EngineLease.name).where(*self.held()).with_for_update()
        ).first()
        if held is None:
            raise LostLease(f"the rollout lease is no longer held by {self.holder}")

    def release(self) -> None:
        """Let a successor take over at once (a clean shutdown)."""
        with writing(self.engine) as conn:
            conn.execute(
                update(EngineLease)
                .where(EngineLease.name == NAME, EngineLease.holder == self.holder)
                .values(expires_at=0.0)
            )


def current(engine: Engine) -> tuple[str | None, float | None]:
    """Who holds the lease and until when (Unix time); (None, None) when nobody does."""
    with reading(engine) as conn:
        row = conn.execute(
            select(EngineLease.holder, EngineLease.expires_at).where(EngineLease.name == NAME)
        ).first()
    if row is None or not row[0] or row[1] < time.time():
        return None, None
    return row[0], row[1]
