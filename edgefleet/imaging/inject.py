"""``edgefleet image inject``: put the registration file into a partition of a disk image.

The order is what keeps an image whole: validate the registration file, read the
partition table, choose the partition, check that its file system is one we can write,
lies inside its partition and has room, and only then write (in place, through the
file system's own tools, which touch nothing outside its byte range) and read the file
back. A refusal at any step before the write leaves the image byte for byte as it was.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgefleet.errors import ConfigError
from edgefleet.imaging import ext4, fat
from edgefleet.imaging.partitions import DiskImage, Partition, read_table, select
from edgefleet.imaging.source import read_registration

DEFAULT_PATHS = {
    "fat": PurePosixPath("edgefleet/registration.yaml"),
    "ext": PurePosixPath("etc/edgefleet/registration.yaml"),
}
"""Where the file goes in each kind of partition: a FAT partition is the boot partition,
which the device mounts at /boot; an ext partition is taken to be the root file system."""

MOUNT_POINTS = {"fat": PurePosixPath("/boot"), "ext": PurePosixPath("/")}
WRITERS = {"fat": fat, "ext": ext4}
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9._+@~-]+$")


@dataclass(frozen=True)
class Injected:
    image: Path
    partition: Partition
    path: PurePosixPath
    """Inside the partition."""
    device_path: PurePosixPath
    """Where the running device sees it, if the partition is mounted where we assume."""
    size: int
    mode: int | None
    """The file's mode as stored; None on FAT, which has none."""


def parse_path(text: str) -> PurePosixPath:
    path = PurePosixPath("/" + text.strip().lstrip("/"))
    parts = path.parts[1:]
    if not parts or any(p in (".", "..") or not _SAFE_COMPONENT.match(p) for p in parts):
        raise ConfigError(
            f"--path {text!r} must be a relative file path inside the partition made of "
            "letters, digits and ._+@~- (no spaces, no ..), like edgefleet/registration.yaml"
        )
    return PurePosixPath(*parts)


def check_writable(disk: DiskImage, part: Partition) -> None:
    fs = part.fs
    if fs.kind not in WRITERS:
        raise ConfigError(
            f"partition {part.number} of {disk.path} holds {fs.describe()}, not FAT or "
            f"ext2/3/4, so the registration file cannot be written there; partitions "
            f"found: {disk.listing()}",
            code="unsupported_filesystem",
        )
    if fs.size is not None and fs.size > part.size:
        raise ConfigError(
            f"the {fs.variant} file system in partition {part.number} of {disk.path} claims "
            f"{fs.size} bytes but the partition has {part.size}: writing could spill into "
            "the next partition, so nothing was written (repair the image first)",
            code="unsupported_filesystem",
        )
    if fs.needs_recovery:
        raise ConfigError(
            f"the {fs.variant} file system in partition {part.number} of {disk.path} has a "
            "journal that was never replayed (it was not unmounted cleanly); run "
            f"`e2fsck` on it first (e.g. on a copy extracted with dd skip={part.start} "
            f"count={part.size} iflag=skip_bytes,count_bytes)",
            code="unsupported_filesystem",
        )


def inject(
    image: Path,
    registration: Path,
    partition: str | None = None,
    path: str | None = None,
) -> Injected:
    """Write ``registration`` into ``image``; see the module docstring for the order."""
    data, _ = read_registration(registration)
    fs_path = parse_path(path) if path is not None else None
    disk = read_table(image)
    part = select(disk, partition)
    check_writable(disk, part)
    fs_path = fs_path or DEFAULT_PATHS[part.fs.kind]
    _check_room(disk, part, len(data))
    writer = WRITERS[part.fs.kind]
    try:
        lock = image.open("rb+")
    except OSError as exc:
        raise ConfigError(f"cannot open {image} for writing: {exc.strerror}") from exc
    with tempfile.TemporaryDirectory(prefix="edgefleet-image-") as tmp, lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(f"{image} is being written by another process") from exc
        work = Path(tmp)
        # The tools take the image as "NAME@@OFFSET" or "NAME?offset=N": a link with a
        # plain name keeps '@', '?' or spaces in the real file name from confusing them.
        link = work / "image"
        link.symlink_to(image.resolve())
        source = work / "registration.yaml"
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        writer.write(link, part, fs_path, source)
        back = writer.read(link, part, fs_path)
        mode = writer.mode(link, part, fs_path)
    if back != data:
        raise ConfigError(
            f"the registration file read back from partition {part.number} of {image} "
            f"differs from what was written ({'missing' if back is None else len(back)} "
            f"bytes, expected {len(data)}); do not flash this image"
        )
    if mode is not None and mode & 0o7777 != ext4.MODE:
        raise ConfigError(f"/{fs_path} in partition {part.number} has mode {mode:o}, not 600")
    return Injected(image, part, fs_path, MOUNT_POINTS[part.fs.kind] / fs_path, len(data), mode)


def _check_room(disk: DiskImage, part: Partition, size: int) -> None:
    fs = part.fs
    if fs.free_bytes is not None and fs.free_bytes < size + 3 * 4096:
        raise ConfigError(
            f"partition {part.number} of {disk.path} has {fs.free_bytes} bytes free, too "
            "few for the registration file",
            code="no_space",
        )
    if fs.free_inodes is not None and fs.free_inodes < 3:
        raise ConfigError(f"partition {part.number} of {disk.path} has no free inodes")
