"""The boot-control record: which slot is active, which is on trial, and how each fared.

It is the one thing a device reads first after any crash, so it is kept as
two copies (``boot.0.json``, ``boot.1.json``), each with a generation number
and a checksum. A save replaces the *older* copy atomically (temporary file,
fsync, rename, fsync the folder), so the newer copy survives a save that is
cut short, and a copy damaged on the medium only costs one generation.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from edgefleet.agent.files import atomic_write, fsync_dir

SlotState = Literal["empty", "good", "bad", "trying"]
SLOTS = ("A", "B")
FORMAT = "edgefleet-boot-control/1"
COPIES = ("boot.0.json", "boot.1.json")


@dataclass
class SlotInfo:
    state: SlotState = "empty"
    revision: int | None = None
    manifest_digest: str | None = None
    """sha256 of the canonical manifest JSON (``manifest.manifest_digest``)."""
    reason: str = ""
    """Why the slot is bad, when it is."""
    bad_revisions: list[int] = field(default_factory=list)
    """Revisions that failed in this slot: not tried again unless an operator retries."""


def _two_slots() -> dict[str, SlotInfo]:
    return {name: SlotInfo() for name in SLOTS}


@dataclass
class Record:
    generation: int = 0
    active: str | None = None
    """"A", "B", or None on a first install before anything was good."""
    trying: str | None = None
    attempts_left: int = 0
    slots: dict[str, SlotInfo] = field(default_factory=_two_slots)
    last_failure: dict[str, Any] | None = None

    def inactive(self) -> str:
        """The slot an update writes: never the active one."""
        return "B" if self.active == "A" else "A"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Rebuild a record, refusing any shape ``save`` never writes (ValueError)."""
        try:
            slots = {name: SlotInfo(**info) for name, info in data["slots"].items()}
            record = cls(**{**data, "slots": slots})
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a boot-control record: {exc}") from exc
        _check(record)
        return record


def _check(record: Record) -> None:
    if set(record.slots) != set(SLOTS):
        raise ValueError(f"slots {sorted(record.slots)} are not {list(SLOTS)}")
    for name in (record.active, record.trying):
        if name is not None and name not in SLOTS:
            raise ValueError(f"unknown slot {name!r}")
    if not isinstance(record.generation, int) or record.generation < 0:
        raise ValueError(f"bad generation {record.generation!r}")
    for info in record.slots.values():
        if info.state not in get_args(SlotState):
            raise ValueError(f"unknown slot state {info.state!r}")


def _checksum(body: dict[str, Any]) -> str:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def encode(record: Record) -> bytes:
    """One copy on disk: the record, its format and a checksum over both."""
    body = {"format": FORMAT, "record": record.to_dict()}
    return (json.dumps({**body, "checksum": _checksum(body)}, sort_keys=True) + "\n").encode()


def decode(raw: bytes) -> Record:
    """The record in one copy; ValueError if it is torn, damaged or not ours."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a boot-control record")
    body = {"format": doc["format"], "record": doc.get("record")}
    if doc.get("checksum") != _checksum(body) or not isinstance(body["record"], dict):
        raise ValueError("checksum mismatch")
    return Record.from_dict(body["record"])


class BootControl:
    """The two copies of the record in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self) -> Record:
        """The newest valid copy; a fresh Record if neither copy is valid."""
        valid = [r for r in self._copies() if r is not None]
        return max(valid, key=lambda r: r.generation) if valid else Record()

    def save(self, record: Record) -> Record:
        """Write ``record`` as the next generation over the older copy; returns what was saved.

        The generation follows the newest copy on disk even if ``record`` was
        loaded earlier, so the newest copy is always the last one saved.
        """
        copies = self._copies()
        newest = max((r.generation for r in copies if r is not None), default=0)
        saved = replace(copy.deepcopy(record), generation=max(newest, record.generation) + 1)
        _check(saved)
        target = min(
            range(len(COPIES)),
            key=lambda i: -1 if copies[i] is None else copies[i].generation,  # type: ignore[union-attr]
        )
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True)
            fsync_dir(self.folder.parent)
        for stale in self.folder.glob(".boot.*.tmp"):  # left by a save a power cut stopped
            stale.unlink(missing_ok=True)
        atomic_write(self.folder / COPIES[target], encode(saved))
        return saved

    def _copies(self) -> list[Record | None]:
        out: list[Record | None] = []
        for name in COPIES:
            try:
                out.append(decode((self.folder / name).read_bytes()))
            except (FileNotFoundError, ValueError):
                out.append(None)
        return out
