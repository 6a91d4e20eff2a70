"""What a slot backend does, and the errors it raises.

A backend only moves bytes: the boot-control record decides which slot is
active and whether a slot's content is trusted. ``write`` may leave the slot
empty when it fails (its old content is the first thing it drops, so a slot
never needs room for two sets); the caller marks the slot ``empty`` in the
record before writing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from edgefleet.agent.slots.record import SLOTS
from edgefleet.errors import EdgefleetError


class SlotCorrupt(EdgefleetError):
    """Read-back verification failed: the medium does not hold the set the manifest names."""

    default_code = "slot_corrupt"


class SlotWriteError(EdgefleetError):
    """Writing a slot failed (full disk, I/O error, set larger than the slot); nothing half-written
    is left behind."""

    default_code = "slot_write"


class SlotBackend(Protocol):
    def write(self, slot: str, staged: Path, manifest: dict[str, str]) -> None:
        """The staged set (a folder) into ``slot``, every file fsynced; old content replaced."""

    def verify(self, slot: str, manifest: dict[str, str]) -> None:
        """Read the slot back from the medium, not the page cache; raise SlotCorrupt."""

    def open(self, slot: str) -> Path:
        """A folder the runner loads the set from."""

    def clear(self, slot: str) -> None:
        """Drop the slot's content; it holds no set afterwards."""

    def read_manifest(self, slot: str) -> dict[str, str]:
        """The manifest stored with the slot's set, so a device can verify its active slot
        after a restart; SlotCorrupt if the slot holds no complete set."""


def check_slot(slot: str) -> str:
    """``slot`` if it names one; a wrong name is a programming error, not an operator's."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}: slots are {' and '.join(SLOTS)}")
    return slot
