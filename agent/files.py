"""Crash-safe writes for everything the agent keeps on disk.

A device may lose power at any moment, so a file is either its old or its new
version, never half of each: write a temporary file beside it, fsync, rename,
fsync the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def ensure_dir(path: Path) -> Path:
    """Create the state folder private to the agent (0700); keys live there."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``; the file has ``mode`` from its first byte on."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None if it does not exist yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
