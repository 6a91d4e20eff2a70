"""A slot write that fills the disk fails cleanly: an error to act on, nothing half-written.

The file system is a real one: a few megabytes of ext4 in an image file,
loop-mounted for the test (root and loop devices needed, as on a device).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgefleet.agent.slots import FolderSlots, SlotCorrupt, SlotWriteError
from tests.agent.slotsets import make_set


def test_a_slot_write_that_fills_the_disk_fails_cleanly(small_fs: Path, tmp_path: Path) -> None:
    slots = FolderSlots(small_fs / "slots")
    good = make_set(tmp_path / "good", "r1")
    slots.write("A", tmp_path / "good", good)
    free_before = shutil.disk_usage(small_fs).free

    too_big = make_set(
        tmp_path / "big",
        "r2",
        {f"models/part{i}.onnx": os.urandom(2 << 20) for i in range(4)},
    )
    with pytest.raises(SlotWriteError) as caught:
        slots.write("B", tmp_path / "big", too_big)

    err = caught.value
    assert err.code == "slot_no_space"
    assert "no space left" in err.message and str(small_fs / "slots") in err.message
    assert "the other slot is untouched" in err.message
    slots.verify("A", good)  # the running slot
    assert sorted(p.name for p in (small_fs / "slots").iterdir()) == [".A.manifest.json", "A"]
    with pytest.raises(SlotCorrupt, match="holds no complete set"):
        slots.read_manifest("B")
    assert shutil.disk_usage(small_fs).free >= free_before  # every partial file removed

    small = make_set(tmp_path / "small", "r3")  # what an operator does next: a set that fits
    slots.write("B", tmp_path / "small", small)
    slots.verify("B", small)
