"""Engine, sessions and migrations. Built by the app factory, never at import time."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import delete, event, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from edgefleet.errors import ApiError, ConfigError, InsufficientStorage, Unavailable

ALEMBIC_DIR = Path(__file__).with_name("alembic")


class WriteLock:
    """Serialises SQLite writers across threads and worker processes.

    SQLite allows one writer; left to itself, a waiting writer polls with growing
    sleeps (its busy handler), which turns contention into second-long tails. A
    thread lock plus an ``flock`` on a file beside the database queues writers
    instead and wakes the next one the moment the lock is free.
    """

    def __init__(self, path: Path) -> None:
        self._thread_lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


_NO_LOCK = nullcontext()


def write_lock(engine: Engine) -> Any:
    lock = getattr(engine, "_edgefleet_write_lock", None)
    return lock.held() if lock is not None else _NO_LOCK


def _postgres_session(dbapi_conn: Any, _record: Any) -> None:
    """Plan every statement for its own parameters. psycopg prepares statements after a
    few runs, and PostgreSQL may then settle on one generic plan: made while the device
    table was still empty (a fresh controller enrolling its fleet), that plan is a
    sequential scan, and every later enrolment pays for every device enrolled before."""
    with dbapi_conn.cursor() as cur:
        cur.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_conn.commit()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a device told it is enrolled must still be enrolled after a power cut.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """SQLite in WAL mode (writers wait instead of failing), or PostgreSQL via psycopg 3."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        path = engine.url.database
        if path and path != ":memory:":
            engine._edgefleet_write_lock = WriteLock(Path(path + ".writelock"))  # type: ignore[attr-defined]
        return engine
    if url.startswith("postgresql+"):
        engine = create_engine(url, pool_size=8, max_overflow=4, pool_recycle=1800)
        event.listen(engine, "connect", _postgres_session)
        return engine
    raise ConfigError(
        f"unsupported database URL {url.split(':', 1)[0]!r}: use sqlite:///PATH or "
        "postgresql://USER@HOST:PORT/DB"
    )


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One write transaction: committed on success, rolled back on any error."""
    with write_lock(engine), Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A Core write transaction, for hot paths where the ORM's bookkeeping costs too much."""
    with write_lock(engine), engine.begin() as conn:
        yield conn


WRITE_BEHIND_CHUNK = 500
"""Rows per transaction of a write-behind batch (last seen, status samples)."""


def write_behind(
    engine: Engine, execute: Callable[[Connection, list[Any]], None], rows: list[Any]
) -> None:
    """Write ``rows`` in transactions of ``WRITE_BEHIND_CHUNK`` (the writes must be safe
    to repeat: a caller puts the whole batch back after an error). Between chunks the
    write lock is free, so the requests queued behind it (results, changed reports,
    token exchanges) wait for a chunk, not for the whole batch: on SQLite here 5,000
    status samples in one transaction held the lock about 100 ms, 500 about 12 ms."""
    for start in range(0, len(rows), WRITE_BEHIND_CHUNK):
        if start:
            time.sleep(0.001)  # let a waiting writer take the lock
        with writing(engine) as conn:
            execute(conn, rows[start : start + WRITE_BEHIND_CHUNK])


def delete_in_batches(
    engine: Engine,
    table: Any,
    older: Any,
    batch: int,
    budget_seconds: float = float("inf"),
) -> int:
    """Delete the rows of ``table`` (which has an ``id`` key) matching ``older``, ``batch``
    per transaction with the write lock free between them, until none is left or the
    budget is spent (one batch at least); returns how many went. The retention loops
    (results, drift windows) share it."""
    gone, started = 0, time.monotonic()
    while True:
        ids = select(table.c.id).where(older).limit(batch)
        with writing(engine) as conn:
            n = conn.execute(delete(table).where(table.c.id.in_(ids))).rowcount
        gone += n
        if n < batch or time.monotonic() - started >= budget_seconds:
            return gone
        time.sleep(0.001)  # let a waiting writer take the lock


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A Core connection for reads outside any transaction (no BEGIN/ROLLBACK round trips:
    each statement sees the latest committed data on its own)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


DATABASE_RETRY_AFTER_S = (1, 5)
"""Retry-After while the database cannot be reached, drawn from this range: a PostgreSQL
restart takes seconds, and a fleet told one value would come back in one second."""
DISK_FULL_RETRY_AFTER_S = (5, 15)
"""Retry-After for a full disk, drawn from this range: space comes back when a person
frees it, and devices should be back within seconds of that, not a minute."""
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    if orig is None:
        return False
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    return getattr(orig, "sqlstate", None) == _PG_DISK_FULL or "No space left" in str(orig)


def storage_error(exc: BaseException, data_dir: Path) -> ApiError | None:
    """The answer for a request the database or the disk could not serve, or None for a
    real bug (which stays a 500).

    A full disk (SQLite's SQLITE_FULL, PostgreSQL's disk_full, ENOSPC from a file
    write) is a 507 naming the disk; a lost or refused database connection, a pool
    timeout or a locked SQLite file is a 503. Both carry Retry-After, and the
    transaction was rolled back, so the request stored nothing and may be sent again.
    The engine's pool drops connections broken by a server restart on first use, so
    the next request reconnects without a restart of the controller."""
    if _disk_full(exc):
        where = (
            f"the controller's data directory {data_dir}"
            if getattr(getattr(exc, "orig", None), "sqlstate", None) != _PG_DISK_FULL
            else "the database server's disk"
        )
        return InsufficientStorage(
            f"{where} is full (no space left on device); nothing from this request was "
            "stored: free space there, then retry",
            retry_after=random.randint(*DISK_FULL_RETRY_AFTER_S),
        )
    if isinstance(exc, sa_exc.TimeoutError) or (
        isinstance(exc, sa_exc.DBAPIError)
        and (
            exc.connection_invalidated
            or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
        )
    ):
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return Unavailable(
            f"the database is unavailable ({first[0] if first else type(exc).__name__}); "
            "nothing from this request was stored: retry shortly",
            code="database_unavailable",
            retry_after=random.randint(*DATABASE_RETRY_AFTER_S),
        )
    return None


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; safe on every start)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with writing(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
