"""A content-addressed blob store on the device: ``blobs/sha256/<hex>``.

A blob appears under its digest only after its bytes were verified against it, by an
atomic rename of a complete, flushed file, so a name in ``blobs/`` always means a good
blob. Downloads in progress live in ``ingest/<hex>.partial`` and survive restarts (a
pull resumes them); ``ingest/<hex>.lock`` serializes everyone who wants one digest:
threads through a per-digest lock, processes through ``fcntl.flock`` on that file (the
partial file itself is renamed away on success, so it cannot carry the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from edgefleet.agent.files import fsync_dir
from edgefleet.oci import digest as dg
from edgefleet.oci.reference import check_digest


class BlobStore:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        """``fsync`` makes a stored blob survive a power cut, at the cost of a flush per blob."""
        self.root = root
        self.fsync = fsync
        self.blobs = root / "blobs" / "sha256"
        self.ingest = root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingest.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def path(self, digest: str) -> Path:
        return self.blobs / dg.hex_of(check_digest(digest))

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def partial(self, digest: str) -> Path:
        return self.ingest / f"{dg.hex_of(check_digest(digest))}.partial"

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    @contextlib.contextmanager
    def exclusive(self, digest: str) -> Iterator[None]:
        """Hold the digest against every other thread and process using this store."""
        with self._locks_lock:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            fd = os.open(self.ingest / f"{dg.hex_of(digest)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def commit(self, digest: str, source: Path) -> Path:
        """Move a verified file under its digest (flushed first when ``fsync``)."""
        target = self.path(digest)
        if self.fsync:
            with source.open("rb") as f:
                os.fsync(f.fileno())
        os.replace(source, target)
        if self.fsync:
            fsync_dir(self.blobs)
        return target

    def put(self, digest: str, data: bytes) -> Path:
        """Store small bytes already verified against ``digest`` (a manifest)."""
        dg.verify(data, digest, f"storing {digest}")
        with self.exclusive(digest):
            if not self.has(digest):
                tmp = self.ingest / f"{dg.hex_of(digest)}.put"
                tmp.write_bytes(data)
                self.commit(digest, tmp)
        return self.path(digest)
