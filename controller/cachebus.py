"""Cache invalidation between worker processes: a generation counter in a file.

Every cache a worker keeps in memory (desired-state ETags, device credential
generations, decommissions) is dropped when the counter moves. A writer bumps
it after its transaction commits; a reader costs one ``stat`` per request and no
database round trip. The file is replaced atomically, so the inode changes with
every bump. (Replicas on other hosts use PostgreSQL LISTEN/NOTIFY, which feeds
the same ``bump``/``changed`` contract.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class FileEpoch:
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
