"""What reached the medium: folder fsync, and reads that bypass the page cache.

A verification read served from the page cache proves only that the kernel
still remembers what was written. Reads here use O_DIRECT where the file
system allows it; elsewhere (tmpfs before Linux 6.6, some FUSE file systems)
the file is fsynced and its cached pages dropped with POSIX_FADV_DONTNEED, so
the next read goes to the device.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20
"""Bytes per read: a multiple of every logical block size O_DIRECT asks for."""
ALIGN = 4096


def read_medium(path: Path, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """The bytes of ``path`` in ``[offset, offset + length)``, read from the device.

    ``length`` None reads to the end (of the file, or of the block device).
    """
    fd, direct = _open_uncached(path)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        stop = end if length is None else min(end, offset + length)
        if direct:
            yield from _read_direct(fd, offset, stop)
        else:
            yield from _read_plain(fd, offset, stop)
    finally:
        os.close(fd)


def medium_sha256(path: Path) -> str:
    """``sha256:<hex>`` of the whole file as the device holds it."""
    h = hashlib.sha256()
    for chunk in read_medium(path):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _open_uncached(path: Path) -> tuple[int, bool]:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except BaseException:
        os.close(fd)
        raise
    return fd, False


def _read_direct(fd: int, offset: int, stop: int) -> Iterator[bytes]:
    """O_DIRECT wants aligned offsets, lengths and buffers: mmap memory is page-aligned."""
    buf = mmap.mmap(-1, CHUNK)
    try:
        pos = offset - offset % ALIGN
        while pos < stop:
            got = os.preadv(fd, [buf], pos)
            if got <= 0:
                break
            lo = max(offset - pos, 0)
            hi = min(got, stop - pos)
            if hi > lo:
                yield buf[lo:hi]
            pos += got
            if got < CHUNK:
                break
    finally:
        buf.close()


def _read_plain(fd: int, offset: int, stop: int) -> Iterator[bytes]:
    pos = offset
    while pos < stop:
        chunk = os.pread(fd, min(CHUNK, stop - pos), pos)
        if not chunk:
            break
        yield chunk
        pos += len(chunk)
