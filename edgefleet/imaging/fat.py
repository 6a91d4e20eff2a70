"""FAT partitions through mtools on ``IMAGE@@OFFSET``: no mount, no root.

FAT keeps no owner or mode, so the file's 0600 cannot be stored: on the device the
mount options decide who may read /boot (``fmask``/``umask``).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from edgefleet.errors import ConfigError
from edgefleet.imaging import tools
from edgefleet.imaging.partitions import Partition


def _image(link: Path, part: Partition) -> str:
    return f"{link}@@{part.start}"


def _is_dir(img: str, path: str) -> bool:
    # A trailing slash makes mdir fail on anything but a directory.
    return tools.run(["mdir", "-b", "-i", img, f"::{path}/"], "mdir", check=False).returncode == 0


def _exists(img: str, path: str) -> bool:
    return tools.run(["mdir", "-b", "-i", img, f"::{path}"], "mdir", check=False).returncode == 0


def write(link: Path, part: Partition, fs_path: PurePosixPath, source: Path) -> None:
    img, where = _image(link, part), f"partition {part.number}"
    current = ""
    for component in fs_path.parts[:-1]:
        current += "/" + component
        if _is_dir(img, current):
            continue
        if _exists(img, current):
            raise ConfigError(
                f"{current} in {where} is a file, not a folder; choose another --path"
            )
        tools.run(["mmd", "-i", img, f"::{current}"], f"creating the folder {current} in {where}")
    target = f"/{fs_path}"
    if _is_dir(img, target):
        raise ConfigError(f"{target} in {where} is a folder; choose another --path")
    tools.run(
        ["mcopy", "-D", "o", "-i", img, source, f"::{target}"], f"writing {target} into {where}"
    )


def read(link: Path, part: Partition, fs_path: PurePosixPath) -> bytes | None:
    done = tools.run(
        ["mcopy", "-i", _image(link, part), f"::/{fs_path}", "-"], "mcopy", check=False, text=False
    )
    return done.stdout if done.returncode == 0 else None


def mode(link: Path, part: Partition, fs_path: PurePosixPath) -> int | None:
    """FAT has no modes."""
    return None
