"""What file system starts at an offset, read from its own superblock.

Only two kinds are writable here (FAT and ext2/3/4); the rest are recognised so that a
refusal can say what was found instead of "unsupported".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

PROBE_BYTES = 68 * 1024
"""Enough to see every signature below (btrfs keeps its superblock at 64 KiB)."""

EXT_INCOMPAT_RECOVER = 0x4
EXT_INCOMPAT_EXTENTS = 0x40
EXT_INCOMPAT_64BIT = 0x80
EXT_INCOMPAT_FLEX_BG = 0x200
EXT_COMPAT_HAS_JOURNAL = 0x4


@dataclass(frozen=True)
class FileSystem:
    kind: str
    """``fat``, ``ext``, ``other`` (recognised, not writable) or ``none``."""
    variant: str
    """What people call it: FAT16, FAT32, ext4, squashfs, ..."""
    label: str = ""
    size: int | None = None
    """Bytes the file system says it spans, where known: it must fit its partition."""
    needs_recovery: bool = False
    """ext3/4 with an unreplayed journal: writing now would be undone or worse."""
    free_bytes: int | None = None
    free_inodes: int | None = None

    def describe(self) -> str:
        label = f" labelled {self.label!r}" if self.label else ""
        return f"{self.variant}{label}"


NONE = FileSystem("none", "nothing (the bytes are blank)")


def probe(f: BinaryIO, offset: int) -> FileSystem:
    f.seek(offset)
    head = f.read(PROBE_BYTES)
    return probe_bytes(head)


def probe_bytes(head: bytes) -> FileSystem:
    if len(head) >= 2048 and head[1024 + 56 : 1024 + 58] == b"\x53\xef":
        return _ext(head[1024:2048])
    fat = _fat(head)
    if fat is not None:
        return fat
    for offset, magic, name in _OTHERS:
        if head[offset : offset + len(magic)] == magic:
            return FileSystem("other", name)
    if not head.strip(b"\x00"):
        return NONE
    return FileSystem("other", "no file system this tool recognises")


_OTHERS = (
    (32769, b"CD001", "an ISO 9660 file system"),
    (0, b"hsqs", "a squashfs file system (read-only)"),
    (0x10040, b"_BHRfS_M", "a btrfs file system"),
    (0, b"XFSB", "an XFS file system"),
    (4086, b"SWAPSPACE2", "Linux swap"),
    (65526, b"SWAPSPACE2", "Linux swap"),
    (3, b"NTFS    ", "an NTFS file system"),
    (3, b"EXFAT   ", "an exFAT file system"),
    (1024, b"\x10\x20\xf5\xf2", "an F2FS file system"),
    (1024, b"\xe2\xe1\xf5\xe0", "an EROFS file system (read-only)"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
)


def _ext(sb: bytes) -> FileSystem:
    (blocks_lo, free_lo, free_inodes, log_block) = struct.unpack_from("<4xIxxxxIIxxxxI", sb, 0)
    compat, incompat = struct.unpack_from("<II", sb, 92)
    block_size = 1024 << log_block
    blocks_hi = free_hi = 0
    if incompat & EXT_INCOMPAT_64BIT:
        blocks_hi, free_hi = struct.unpack_from("<I4xI", sb, 0x150)
    if incompat & (EXT_INCOMPAT_EXTENTS | EXT_INCOMPAT_64BIT | EXT_INCOMPAT_FLEX_BG):
        variant = "ext4"
    elif compat & EXT_COMPAT_HAS_JOURNAL:
        variant = "ext3"
    else:
        variant = "ext2"
    return FileSystem(
        "ext",
        variant,
        label=sb[120:136].split(b"\x00")[0].decode(errors="replace"),
        size=((blocks_hi << 32) | blocks_lo) * block_size,
        needs_recovery=bool(incompat & EXT_INCOMPAT_RECOVER),
        free_bytes=((free_hi << 32) | free_lo) * block_size,
        free_inodes=free_inodes,
    )


def _fat(bs: bytes) -> FileSystem | None:
    if len(bs) < 512 or bs[510:512] != b"\x55\xaa" or bs[0] not in (0xEB, 0xE9):
        return None
    bytes_per_sector, per_cluster, reserved, fats, root_entries, total16 = struct.unpack_from(
        "<HBHBHH", bs, 11
    )
    fat16_size = struct.unpack_from("<H", bs, 22)[0]
    total32, fat32_size = struct.unpack_from("<II", bs, 32)
    if bytes_per_sector not in (512, 1024, 2048, 4096) or per_cluster == 0 or fats == 0:
        return None
    total = total16 or total32
    fat_size = fat16_size or fat32_size
    root_sectors = (root_entries * 32 + bytes_per_sector - 1) // bytes_per_sector
    data = total - reserved - fats * fat_size - root_sectors
    if data <= 0:
        return None
    clusters = data // per_cluster
    if fat16_size == 0:
        variant, label_at = "FAT32", 71
    else:
        variant, label_at = ("FAT12" if clusters < 4085 else "FAT16"), 43
    label = bs[label_at : label_at + 11].decode("ascii", errors="replace").strip()
    return FileSystem(
        "fat",
        variant,
        label="" if label == "NO NAME" else label,
        size=total * bytes_per_sector,
    )


def iso_volume_id(head: bytes) -> str | None:
    """The volume id of an ISO 9660 image, None if ``head`` is not one."""
    if head[32769:32774] != b"CD001":
        return None
    return head[32768 + 40 : 32768 + 72].decode("ascii", errors="replace").strip()
