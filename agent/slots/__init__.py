"""A/B slots: two complete sets, a boot-control record saying which one to run, and the
bootloader environment for OS-image slots (DESIGN.md, A/B slots).

Standard library only: the daemon carries this package (see
``tests/agent/test_agent_import_closure.py``).

    record.py    Record, SlotInfo, BootControl: two checksummed copies, newest valid wins
    backend.py   the SlotBackend protocol, SlotCorrupt, SlotWriteError
    folder.py    FolderSlots: slots as folders (the default)
    image.py     ImageSlots: slots on block devices or image files
    bootenv.py   GrubEnv, UBootEnv: the slot a bootloader boots, and its boot attempts
    manifest.py  a set's manifest and its digest
    medium.py    fsync of folders, reads that bypass the page cache
"""

from edgefleet.agent.slots.backend import SlotBackend, SlotCorrupt, SlotWriteError
from edgefleet.agent.slots.folder import FolderSlots
from edgefleet.agent.slots.image import ImageSlots
from edgefleet.agent.slots.manifest import build_manifest, manifest_digest
from edgefleet.agent.slots.record import BootControl, Record, SlotInfo, SlotState

__all__ = [
    "BootControl",
    "FolderSlots",
    "ImageSlots",
    "Record",
    "SlotBackend",
    "SlotCorrupt",
    "SlotInfo",
    "SlotState",
    "SlotWriteError",
    "build_manifest",
    "manifest_digest",
]
