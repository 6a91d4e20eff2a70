"""The partition table of a disk image, read with ``sfdisk --json`` (no root for a file),
and the choice of one partition by number, GPT name or file system label."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from edgefleet.errors import ConfigError
from edgefleet.imaging import tools
from edgefleet.imaging.probe import FileSystem, probe

EXTENDED_TYPES = {"5", "f", "85"}
"""MBR extended partitions: containers of logical partitions, never a file system."""


@dataclass(frozen=True)
class Partition:
    number: int
    start: int
    """Byte offset in the image."""
    size: int
    """Bytes."""
    name: str
    """The GPT partition name; empty on MBR, which has none."""
    type: str
    fs: FileSystem

    def describe(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"{self.number}{name} ({self.fs.describe()}, {_size(self.size)})"


@dataclass(frozen=True)
class DiskImage:
    path: Path
    scheme: str
    """``gpt`` or ``dos`` (MBR), as sfdisk names them."""
    size: int
    partitions: list[Partition]

    def listing(self) -> str:
        return "; ".join(p.describe() for p in self.partitions) or "none"


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.4g} {unit}"


def read_table(path: Path) -> DiskImage:
    """The image's partitions with what each holds; ConfigError if it is no disk image."""
    if not path.exists():
        raise ConfigError(f"image {path} does not exist", code="not_an_image")
    if not path.is_file():
        raise ConfigError(
            f"{path} is not a regular file: inject writes into image files "
            "(flash the image to the device afterwards)",
            code="not_an_image",
        )
    size = path.stat().st_size
    done = tools.run(["sfdisk", "--json", path], "reading the partition table", check=False)
    table = {}
    if done.returncode == 0:
        try:
            table = json.loads(done.stdout).get("partitiontable", {})
        except json.JSONDecodeError:
            table = {}
    sector = int(table.get("sectorsize", 512))
    with path.open("rb") as f:
        parts = [
            _partition(entry, sector, f)
            for entry in table.get("partitions", [])
            if entry.get("size", 0) > 0
        ]
        if not parts:
            found = probe(f, 0)
            what = (
                f"it holds {found.describe()} with no partition table around it"
                if found.kind != "none"
                else "sfdisk found no partition table"
                + (f" ({done.stderr.strip()})" if done.stderr.strip() else "")
            )
            raise ConfigError(
                f"{path} is not a disk image with partitions: {what}", code="not_an_image"
            )
    for p in parts:
        if p.start + p.size > size:
            raise ConfigError(
                f"{path} is truncated: partition {p.number} ends at byte {p.start + p.size} "
                f"but the file has {size} bytes",
                code="not_an_image",
            )
    return DiskImage(path, table.get("label", "?"), size, parts)


def _partition(entry: dict[str, Any], sector: int, f: BinaryIO) -> Partition:
    found = re.search(r"(\d+)$", str(entry.get("node", "")))
    if found is None:
        raise ConfigError(f"sfdisk listed a partition without a number: {entry}")
    number = int(found.group(1))
    start, size = entry["start"] * sector, entry["size"] * sector
    ptype = str(entry.get("type", "")).lower()
    if ptype in EXTENDED_TYPES:
        fs = FileSystem("other", "an extended partition (a container of logical ones)")
    else:
        fs = probe(f, start)
    return Partition(number, start, size, entry.get("name", ""), ptype, fs)


def select(disk: DiskImage, spec: str | None) -> Partition:
    """Partition ``spec`` (a number, a GPT name or a file system label); by default the
    first FAT partition: the boot partition a device mounts at /boot."""
    if spec is None:
        for p in disk.partitions:
            if p.fs.kind == "fat":
                return p
        raise ConfigError(
            f"{disk.path} has no FAT (boot) partition; name one with --partition "
            f"(partitions found: {disk.listing()})",
            code="partition_not_found",
        )
    spec = spec.strip()
    if spec.isdigit():
        matches = [p for p in disk.partitions if p.number == int(spec)]
    else:
        wanted = spec.casefold()
        matches = [
            p
            for p in disk.partitions
            if wanted in (p.name.casefold(), p.fs.label.casefold()) and wanted
        ]
    if not matches:
        raise ConfigError(
            f"{disk.path} has no partition {spec!r} (by number, GPT name or file system "
            f"label); partitions found: {disk.listing()}",
            code="partition_not_found",
        )
    if len(matches) > 1:
        raise ConfigError(
            f"{disk.path}: {spec!r} names more than one partition "
            f"({'; '.join(p.describe() for p in matches)}); choose one by number",
            code="partition_ambiguous",
        )
    return matches[0]
