"""A small ext4 file system on a loop device, for tests that fill a disk."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_ext4(image: Path, mountpoint: Path, size: int) -> Iterator[Path]:
    """``size`` bytes of ext4 (mkfs defaults) mounted at ``mountpoint``; skips the test
    where mkfs or a loop mount is not available (root and loop devices are needed)."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 not found: install Debian's e2fsprogs")
    with image.open("wb") as fh:
        fh.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount a small ext4 (needs root and loop devices): {done.stderr}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
