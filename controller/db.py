"""Engine, sessions and migrations. Built by the app factory, never at import time."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from edgefleet.errors import ConfigError

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


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A Core connection for reads outside any transaction (no BEGIN/ROLLBACK round trips:
    each statement sees the latest committed data on its own)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


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
