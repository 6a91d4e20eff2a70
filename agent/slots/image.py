"""Slots on block devices or image files: one set per device, in a documented layout.

On the medium (all integers big-endian)::

    0       header, 4096 bytes: b"EFSLOT01", manifest length (u64), archive length (u64),
            sha256 of manifest + archive (32 bytes), sha256 of the preceding 56 bytes (32),
            zeros to 4096
    4096    the canonical manifest JSON
    next 4096 boundary
            a POSIX (pax) tar of the set's files, sorted, mtime 0

A write zeroes the header and fsyncs before anything else and writes the
header last, so a slot whose write was cut short reads as holding no set.
An image file stands in for a partition: it is never grown, its size is the
slot's capacity (``truncate -s 512M slot-b.img``). ``open`` extracts the set
under ``mount_root`` (best a tmpfs, e.g. ``/run/edgefleet/slots``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edgefleet.agent.slots.backend import SlotCorrupt, SlotWriteError, check_slot
from edgefleet.agent.slots.manifest import (
    ManifestError,
    canonical,
    check_manifest,
    manifest_digest,
)
from edgefleet.agent.slots.medium import ALIGN, CHUNK, read_medium
from edgefleet.errors import ConfigError

MAGIC = b"EFSLOT01"
HEADER = struct.Struct(">8sQQ32s")
HEADER_SIZE = 4096


@dataclass(frozen=True)
class _Header:
    manifest_len: int
    archive_len: int
    payload_sha256: bytes

    @property
    def archive_offset(self) -> int:
        return HEADER_SIZE + _align(self.manifest_len)

    def pack(self) -> bytes:
        fields = HEADER.pack(MAGIC, self.manifest_len, self.archive_len, self.payload_sha256)
        return (fields + hashlib.sha256(fields).digest()).ljust(HEADER_SIZE, b"\0")

    @classmethod
    def unpack(cls, raw: bytes) -> _Header | None:
        fields, check = raw[: HEADER.size], raw[HEADER.size : HEADER.size + 32]
        if len(fields) < HEADER.size or hashlib.sha256(fields).digest() != check:
            return None
        magic, manifest_len, archive_len, payload = HEADER.unpack(fields)
        return cls(manifest_len, archive_len, payload) if magic == MAGIC else None


class ImageSlots:
    """Each slot a block device or a pre-sized image file."""

    def __init__(self, devices: dict[str, Path], mount_root: Path) -> None:
        for slot in devices:
            check_slot(slot)
        self.devices = devices
        self.mount_root = mount_root

    def write(self, slot: str, staged: Path, manifest: dict[str, str]) -> None:
        manifest = check_manifest(manifest)
        device = self._device(slot)
        mbytes = canonical(manifest)
        capacity = _size(device)
        need = (
            HEADER_SIZE
            + _align(len(mbytes))
            + sum(_align((staged / rel).stat().st_size, 512) + 512 for rel in manifest)
        )
        if need > capacity:
            raise SlotWriteError(
                f"slot {slot}: the set needs at least {need} bytes and {device} holds "
                f"{capacity}; give the slot a larger partition or image",
                code="slot_no_space",
            )
        self._drop_extracted(slot)
        fd = os.open(device, os.O_WRONLY)
        try:
            _pwrite_all(fd, bytes(HEADER_SIZE), 0)
            os.fsync(fd)
            _pwrite_all(fd, mbytes, HEADER_SIZE)
            payload = hashlib.sha256(mbytes)
            out = _MediumWriter(fd, HEADER_SIZE + _align(len(mbytes)), capacity, payload)
            _write_archive(out, staged, manifest, slot)
            os.fsync(fd)
            header = _Header(len(mbytes), out.written, payload.digest())
            _pwrite_all(fd, header.pack(), 0)
            os.fsync(fd)
        except OSError as exc:
            raise self._write_error(slot, device, capacity, need, exc) from exc
        finally:
            os.close(fd)

    def verify(self, slot: str, manifest: dict[str, str]) -> None:
        device = self._device(slot)
        header, stored = self._read_header_and_manifest(slot)
        if stored != canonical(manifest):
            raise SlotCorrupt(
                f"slot {slot} ({device}) holds set {manifest_digest(json.loads(stored))}, "
                f"not the expected {manifest_digest(manifest)}"
            )
        payload = hashlib.sha256(stored)
        reader = _ChunkReader(read_medium(device, header.archive_offset, header.archive_len))
        reader.observe(payload)
        where = f"slot {slot} ({device})"
        try:
            seen = _check_archive(reader, manifest, where)
        except tarfile.TarError as exc:
            raise SlotCorrupt(f"{where}: the set's archive is damaged: {exc}") from exc
        missing = sorted(set(manifest) - seen)
        if missing:
            raise SlotCorrupt(f"{where}: missing from the set: {', '.join(missing)}")
        reader.drain()
        if payload.digest() != header.payload_sha256:
            raise SlotCorrupt(
                f"{where}: the archive's bytes outside the files' contents "
                "do not match what was written"
            )

    def open(self, slot: str) -> Path:
        device = self._device(slot)
        header, _ = self._read_header_and_manifest(slot)
        target = self.mount_root / slot
        partial = self.mount_root / f".{slot}.partial"
        self._drop_extracted(slot)
        partial.mkdir(parents=True)
        reader = _ChunkReader(read_medium(device, header.archive_offset, header.archive_len))
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                tar.extractall(partial, filter="data")
        except tarfile.TarError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise SlotCorrupt(f"slot {slot} ({device}): its archive is damaged: {exc}") from exc
        partial.rename(target)
        return target

    def clear(self, slot: str) -> None:
        fd = os.open(self._device(slot), os.O_WRONLY)
        try:
            _pwrite_all(fd, bytes(HEADER_SIZE), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._drop_extracted(slot)

    def read_manifest(self, slot: str) -> dict[str, str]:
        _, stored = self._read_header_and_manifest(slot)
        try:
            return check_manifest(json.loads(stored))
        except (ValueError, ManifestError) as exc:
            device = self._device(slot)
            raise SlotCorrupt(f"slot {slot}: the manifest on {device} is damaged: {exc}") from exc

    def _read_header_and_manifest(self, slot: str) -> tuple[_Header, bytes]:
        device = self._device(slot)
        header = _Header.unpack(b"".join(read_medium(device, 0, HEADER_SIZE)))
        if header is None:
            raise SlotCorrupt(
                f"slot {slot} ({device}) holds no set: it was never written, "
                "or its write did not finish"
            )
        stored = b"".join(read_medium(device, HEADER_SIZE, header.manifest_len))
        return header, stored

    def _device(self, slot: str) -> Path:
        try:
            device = self.devices[check_slot(slot)]
        except KeyError:
            raise ConfigError(f"no device or image configured for slot {slot}") from None
        if not device.exists():
            raise ConfigError(
                f"slot {slot}: {device} does not exist; point it at a partition, or create "
                f"an image file of the slot's size (truncate -s 512M {device})"
            )
        return device

    def _drop_extracted(self, slot: str) -> None:
        for folder in (self.mount_root / slot, self.mount_root / f".{slot}.partial"):
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _write_error(
        slot: str, device: Path, capacity: int, need: int, exc: OSError
    ) -> SlotWriteError:
        if exc.errno == errno.ENOSPC:
            return SlotWriteError(
                f"slot {slot}: the set does not fit in {device} ({capacity} bytes, at least "
                f"{need} needed); give the slot a larger partition or image. The slot holds "
                "no set now; the other slot is untouched.",
                code="slot_no_space",
            )
        return SlotWriteError(
            f"slot {slot}: writing {device} failed: {exc}. The slot holds no set now; "
            "the other slot is untouched."
        )


def _write_archive(out: _MediumWriter, staged: Path, manifest: dict[str, str], slot: str) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
        for rel in sorted(manifest):
            src = staged / rel
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = src.stat().st_size, 0o644, 0
            with src.open("rb") as fh:
                hashing = _HashingReader(fh)
                tar.addfile(info, hashing)  # type: ignore[arg-type]
            if hashing.digest() != manifest[rel]:
                raise SlotCorrupt(
                    f"slot {slot}: staged file {src} is {hashing.digest()}, the manifest says "
                    f"{manifest[rel]}; staging must be repeated"
                )


def _check_archive(reader: _ChunkReader, manifest: dict[str, str], where: str) -> set[str]:
    """Hash every member as it streams off the medium; the names seen."""
    seen = set()
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[arg-type]
        for member in tar:
            want = manifest.get(member.name)
            if want is None or not member.isfile():
                raise SlotCorrupt(f"{where}: {member.name!r} is not in the set")
            got = _member_digest(tar.extractfile(member))
            if got != want:
                raise SlotCorrupt(f"{where}: {member.name} reads back as {got}, expected {want}")
            seen.add(member.name)
    return seen


def _member_digest(fh: IO[bytes] | None) -> str:
    h = hashlib.sha256()
    while fh is not None and (chunk := fh.read(CHUNK)):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _align(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def _size(device: Path) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


class _MediumWriter:
    """The file object tarfile streams into: the device from ``offset``, never past ``limit``."""

    def __init__(self, fd: int, offset: int, limit: int, payload: hashlib._Hash) -> None:
        self.fd, self.start, self.pos, self.limit, self.payload = fd, offset, offset, limit, payload

    @property
    def written(self) -> int:
        return self.pos - self.start

    def write(self, data: bytes) -> int:
        if self.pos + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "the set does not fit in the slot")
        _pwrite_all(self.fd, data, self.pos)
        self.payload.update(data)
        self.pos += len(data)
        return len(data)


class _HashingReader:
    """A staged file as tarfile reads it, hashed on the way."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.h = fh, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.h.update(data)
        return data

    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


class _ChunkReader:
    """Chunks from the medium as the file object tarfile's stream mode reads (short reads are
    fine: its stream buffer reads again)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.chunk, self.off = chunks, b"", 0
        self.hashes: list[hashlib._Hash] = []

    def observe(self, h: hashlib._Hash) -> None:
        """Feed every byte read, in order, to ``h`` as well."""
        self.hashes.append(h)

    def read(self, n: int = CHUNK) -> bytes:
        if self.off >= len(self.chunk):
            self.chunk, self.off = next(self.chunks, b""), 0
        n = len(self.chunk) if n < 0 else n
        out = self.chunk[self.off : self.off + n]
        self.off += len(out)
        for h in self.hashes:
            h.update(out)
        return out

    def drain(self) -> None:
        """Read what tarfile left unread (end-of-archive padding) so ``observe`` saw it all."""
        while self.read():
            pass
