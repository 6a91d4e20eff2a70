"""The external tools, found even where ``/usr/sbin`` is not on PATH, and run so that a
failure names the step and a missing tool names the Debian package that provides it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edgefleet.errors import ConfigError

PACKAGES = {
    "sfdisk": "fdisk",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mdir": "mtools",
    "mkfs.vfat": "dosfstools",
    "debugfs": "e2fsprogs",
    "xorriso": "xorriso",
}
"""Tool -> the Debian package that installs it (``apt-get install PACKAGE``)."""

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
"""sfdisk, mkfs.vfat and debugfs live here, often off an ordinary user's PATH."""

TIMEOUT_S = 300


def find(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if found is None:
        package = PACKAGES.get(name, name)
        raise ConfigError(
            f"{name} is not installed; install the Debian package {package} "
            f"(apt-get install {package})",
            code="missing_tool",
        )
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LC_ALL="C",
        # mtools refuses partitions whose size is not a whole number of "tracks";
        # a partition inside a disk image has no tracks.
        MTOOLS_SKIP_CHECK="1",
        DEBUGFS_PAGER="__none__",
        PAGER="cat",
    )
    return env


def run(
    args: list[str | Path], step: str, *, check: bool = True, text: bool = True
) -> subprocess.CompletedProcess:
    """Run a tool; with ``check``, a non-zero exit is a ConfigError saying which step failed."""
    argv = [find(str(args[0])), *(str(a) for a in args[1:])]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=text,
            stdin=subprocess.DEVNULL,
            env=_env(),
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"{step}: {args[0]} did not finish in {TIMEOUT_S} s") from exc
    if check and done.returncode != 0:
        stderr = done.stderr if text else done.stderr.decode(errors="replace")
        raise ConfigError(f"{step} failed: {_last_lines(stderr) or f'exit {done.returncode}'}")
    return done


def _last_lines(text: str, n: int = 4) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines()[-n:] if line.strip())
