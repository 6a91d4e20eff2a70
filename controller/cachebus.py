"""Cache invalidation between worker processes and replicas: one contract, two backends.

Every cache a worker keeps in memory (desired-state ETags, device credential
generations, decommissions) is dropped when the epoch moves. A writer calls
``bump()`` after its transaction commits; every device request calls ``check()``;
subscribers drop their caches when it fires. ``start()``/``stop()`` bracket a worker's
life (the app's lifespan).

- SQLite (one host): ``FileEpoch``, a generation counter in a file beside the
  database; a reader costs one ``stat`` per request and no database round trip.
- PostgreSQL (replicas, possibly on other hosts): ``PgEpoch`` in ``pgnotify``, a
  counter row announced with ``NOTIFY edgefleet_cache``; a reader compares numbers
  in memory.

``epoch_for`` is the one place that chooses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import Engine

from edgefleet.controller.settings import Settings


class Epoch(Protocol):
    def subscribe(self, listener: Callable[[], None]) -> None: ...
    def bump(self) -> None: ...
    def check(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


def epoch_for(settings: Settings, engine: Engine) -> Epoch:
    """PostgreSQL databases are shared by replicas: LISTEN/NOTIFY. SQLite: the file."""
    if engine.url.get_backend_name() == "postgresql":
        from edgefleet.controller.pgnotify import PgEpoch

        return PgEpoch(engine)
    return FileEpoch(settings.data_dir / "cache-epoch")


class FileEpoch:
    """The counter in a file, replaced atomically, so the inode changes with every bump."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int] | None = None
        self._listeners: list[Callable[[], None]] = []
        if not path.exists():
            self._write(0)
        self._seen = self._stamp()

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def bump(self) -> None:
        """Announce a committed change to every worker, this one included (at once)."""
        try:
            current = int(self._path.read_text() or 0)
        except (OSError, ValueError):
            current = 0
        self._write(current + 1)
        self._fire()

    def check(self) -> None:
        """Drop this worker's caches if another worker announced a change."""
        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            self._fire()

    def start(self) -> None:
        """Nothing runs in the background: readers ``stat`` the file."""

    def stop(self) -> None:
        pass

    def _fire(self) -> None:
        self._seen = self._stamp()
        for listener in self._listeners:
            listener()

    def _stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def _write(self, value: int) -> None:
        tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        tmp.write_text(str(value))
        os.replace(tmp, self._path)
