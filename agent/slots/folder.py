"""Slots as folders on the device's file system (the default backend).

    <root>/A/                 the set in slot A (what ``open`` returns)
    <root>/.A.manifest.json   its manifest, written last: no manifest, no set
    <root>/.A.partial/        a write in progress; renamed to A/ once every file is synced

A write first drops the slot's manifest and old files, so a slot needs room
for one set only, and a write cut short (crash, full disk) never leaves a
folder that looks complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

from edgefleet.agent.files import atomic_write, fsync_dir
from edgefleet.agent.slots.backend import SlotCorrupt, SlotWriteError, check_slot
from edgefleet.agent.slots.manifest import (
    ManifestError,
    canonical,
    check_manifest,
    manifest_digest,
)
from edgefleet.agent.slots.medium import CHUNK, medium_sha256


class FolderSlots:
    """Slots A and B as ``<root>/A`` and ``<root>/B``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, slot: str, staged: Path, manifest: dict[str, str]) -> None:
        check_slot(slot)
        manifest = check_manifest(manifest)
        self.root.mkdir(parents=True, exist_ok=True)
        self.clear(slot)
        partial = self._partial(slot)
        rel = ""
        try:
            partial.mkdir()
            for rel in sorted(manifest):
                _copy_verified(staged / rel, partial / rel, manifest[rel], slot)
            rel = ""
            _fsync_tree(partial)
            os.rename(partial, self.root / slot)
            fsync_dir(self.root)
            atomic_write(self._manifest_path(slot), canonical(manifest))
        except BaseException as exc:
            self.clear(slot)
            if isinstance(exc, OSError):
                raise self._write_error(slot, staged, manifest, rel, exc) from exc
            raise

    def verify(self, slot: str, manifest: dict[str, str]) -> None:
        stored = self.read_manifest(slot)
        if manifest_digest(stored) != manifest_digest(manifest):
            raise SlotCorrupt(
                f"slot {slot} holds set {manifest_digest(stored)}, "
                f"not the expected {manifest_digest(manifest)}"
            )
        folder = self.root / slot
        for rel, want in sorted(manifest.items()):
            path = folder / rel
            if not path.is_file():
                raise SlotCorrupt(f"slot {slot}: {rel} is missing from {folder}")
            got = medium_sha256(path)
            if got != want:
                raise SlotCorrupt(f"slot {slot}: {path} reads back as {got}, expected {want}")
        extra = sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if not p.is_dir() and p.relative_to(folder).as_posix() not in manifest
        )
        if extra:
            raise SlotCorrupt(f"slot {slot}: files not in the set's manifest: {', '.join(extra)}")

    def open(self, slot: str) -> Path:
        self.read_manifest(slot)
        return self.root / slot

    def clear(self, slot: str) -> None:
        """Manifest first (durably), then the files: a crash never leaves a manifest over a
        half-deleted set."""
        check_slot(slot)
        if not self.root.is_dir():
            return
        self._manifest_path(slot).unlink(missing_ok=True)
        fsync_dir(self.root)
        for folder in (self.root / slot, self._partial(slot)):
            shutil.rmtree(folder, ignore_errors=True)
        fsync_dir(self.root)

    def read_manifest(self, slot: str) -> dict[str, str]:
        path = self._manifest_path(check_slot(slot))
        try:
            return check_manifest(json.loads(path.read_bytes()))
        except FileNotFoundError:
            raise SlotCorrupt(
                f"slot {slot} holds no complete set ({path} is missing): "
                "it was never written, or its write did not finish"
            ) from None
        except (ValueError, ManifestError) as exc:
            raise SlotCorrupt(f"slot {slot}: manifest {path} is damaged: {exc}") from exc

    def _manifest_path(self, slot: str) -> Path:
        return self.root / f".{slot}.manifest.json"

    def _partial(self, slot: str) -> Path:
        return self.root / f".{slot}.partial"

    def _write_error(
        self, slot: str, staged: Path, manifest: dict[str, str], rel: str, exc: OSError
    ) -> SlotWriteError:
        where = f"writing {rel}" if rel else "finishing the write"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            need = sum((staged / r).stat().st_size for r in manifest)
            free = shutil.disk_usage(self.root).free
            return SlotWriteError(
                f"slot {slot}: no space left under {self.root} while {where}: the set needs "
                f"{need} bytes and {free} are free with the slot emptied. Free space on that "
                "file system or give the slots more room; the other slot is untouched.",
                code="slot_no_space",
            )
        return SlotWriteError(
            f"slot {slot}: {where} under {self.root} failed: {exc}. The slot was left empty; "
            "the other slot is untouched."
        )


def _copy_verified(src: Path, dst: Path, want: str, slot: str) -> None:
    """Copy one staged file, fsync it, and check it is the file the manifest names."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd_in = os.open(src, os.O_RDONLY)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            while chunk := os.read(fd_in, CHUNK):
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd_out, view) :]
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    if "sha256:" + h.hexdigest() != want:
        raise SlotCorrupt(
            f"slot {slot}: staged file {src} is sha256:{h.hexdigest()}, the manifest says {want}; "
            "staging must be repeated"
        )


def _fsync_tree(top: Path) -> None:
    """Every folder's entries, deepest first, so each file is reachable after a crash."""
    for folder, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count(os.sep)):
        fsync_dir(Path(folder))
