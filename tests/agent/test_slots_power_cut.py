"""Power cut at every system call of two updates: the device still boots a good slot.

The writer (two updates through the slots and the boot-control record, the
way the update path drives them: one committed, one rolled back) runs once
under strace. ``tests/support/crashreplay.py`` then builds what the disk could
hold after a power cut before each of its calls, with unsynced writes dropped
(all, some, or none of them), and each of those folders "boots": the record
must load, be one that was saved (never a mix of two), not be older than the
last save that returned, and every slot it calls good or trying must verify
against its manifest on the medium; and a slot that claims to hold a set (its
manifest or header is readable) must hold all of it, whatever the record says.

The seed is printed; ``EDGEFLEET_CRASH_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from edgefleet.agent.files import atomic_write
from edgefleet.agent.slots import (
    BootControl,
    FolderSlots,
    ImageSlots,
    Record,
    SlotCorrupt,
    SlotInfo,
)
from edgefleet.agent.slots.manifest import manifest_digest
from tests.agent.slotsets import make_set
from tests.support.crashreplay import MARKER_DIR, Recording, crash_states, record

IMAGE_SIZE = 256 << 10

UPDATES = """
import json, os, sys
from pathlib import Path
from edgefleet.agent.slots import BootControl, FolderSlots, ImageSlots, SlotInfo, manifest_digest
from edgefleet.agent.slots.manifest import build_manifest

root, kind, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
slots = (
    FolderSlots(root / "slots") if kind == "folder"
    else ImageSlots({s: root / "slots" / f"{s}.img" for s in "AB"}, out.parent / "mnt")
)
boot = BootControl(root / "boot")
saved = []

def mark(label):
    try:
        os.open(f"MARKER_DIR/{label}", os.O_RDONLY)
    except OSError:
        pass

def save(rec):
    rec = boot.save(rec)
    saved.append(rec.to_dict())
    mark(f"saved-{rec.generation}")
    return rec

rec = boot.load()
for revision, outcome in ((2, "commit"), (3, "roll back")):
    staged = out.parent / f"staged-{revision}"
    manifest = build_manifest(staged)
    target = rec.inactive()
    bad = rec.slots[target].bad_revisions
    rec.slots[target] = SlotInfo("empty", bad_revisions=bad)
    rec = save(rec)
    slots.write(target, staged, manifest)
    slots.verify(target, manifest)
    rec.slots[target] = SlotInfo("trying", revision, manifest_digest(manifest), bad_revisions=bad)
    rec.trying, rec.attempts_left = target, 3
    rec = save(rec)
    rec.attempts_left -= 1  # spent before the try
    rec = save(rec)
    if outcome == "commit":
        rec.slots[target].state, rec.active = "good", target
    else:
        info = rec.slots[target]
        info.state, info.reason = "bad", "golden probe disagrees"
        info.bad_revisions.append(revision)
        rec.last_failure = {"revision": revision, "slot": target, "reason": info.reason}
    rec.trying, rec.attempts_left = None, 0
    rec = save(rec)
    if outcome != "commit":
        slots.clear(target)
out.write_text(json.dumps(saved))
""".replace("MARKER_DIR", MARKER_DIR)


def _backend(kind: str, root: Path, mount_root: Path) -> FolderSlots | ImageSlots:
    if kind == "folder":
        return FolderSlots(root / "slots")
    return ImageSlots({s: root / "slots" / f"{s}.img" for s in "AB"}, mount_root)


def _seed() -> int:
    seed = int(os.environ.get("EDGEFLEET_CRASH_SEED") or random.randrange(1 << 32))
    print(f"power-cut seed: {seed} (EDGEFLEET_CRASH_SEED={seed} replays it)")
    return seed


def _canonical(record: Record | dict) -> str:
    return json.dumps(record if isinstance(record, dict) else record.to_dict(), sort_keys=True)


def _device_after_first_install(tmp_path: Path, kind: str) -> tuple[Path, Record]:
    """Slot A good with revision 1 and active, all of it on the medium."""
    root = tmp_path / "device"
    (root / "slots").mkdir(parents=True)
    if kind == "image":
        for slot in "AB":
            with (root / "slots" / f"{slot}.img").open("wb") as fh:
                fh.truncate(IMAGE_SIZE)
    manifest = make_set(tmp_path / "staged-1", "r1")
    for revision in (2, 3):
        make_set(tmp_path / f"staged-{revision}", f"r{revision}")
    _backend(kind, root, tmp_path / "mnt").write("A", tmp_path / "staged-1", manifest)
    first = BootControl(root / "boot").save(
        Record(
            active="A", slots={"A": SlotInfo("good", 1, manifest_digest(manifest)), "B": SlotInfo()}
        )
    )
    return root, first


def _boots(
    folder: Path, kind: str, mount_root: Path, allowed: set[str], min_generation: int
) -> None:
    """What the agent checks on start: the record, then the slots it trusts."""
    rec = BootControl(folder / "boot").load()
    assert _canonical(rec) in allowed, f"a record never saved (a mix of two?): {rec}"
    assert rec.generation >= min_generation, "a save that had returned was lost"
    assert rec.active is not None and rec.slots[rec.active].state == "good"
    slots = _backend(kind, folder, mount_root)
    for name, info in rec.slots.items():
        if info.state in ("good", "trying"):
            manifest = slots.read_manifest(name)
            assert manifest_digest(manifest) == info.manifest_digest, (
                f"slot {name} holds another set"
            )
        try:
            manifest = slots.read_manifest(name)
        except SlotCorrupt:
            continue  # holds no set: fine unless the record trusts it (checked above)
        slots.verify(name, manifest)  # a slot that claims a set holds all of it


def _saves_returned_before(rec: Recording, k: int) -> int:
    done = [op.label for op in rec.ops[:k] if op.kind == "marker" and op.label.startswith("saved-")]
    return max((int(label.split("-")[1]) for label in done), default=0)


@pytest.mark.parametrize("kind", ["folder", "image"])
def test_a_power_cut_at_any_call_of_two_updates_leaves_a_bootable_device(
    tmp_path: Path, kind: str
) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace not found: install Debian's strace package (deps/apt-test.txt)")
    seed = _seed()
    root, first = _device_after_first_install(tmp_path, kind)
    out = tmp_path / "saved.json"
    recording = record(UPDATES, root, (str(root), kind, str(out)))
    saved = json.loads(out.read_text())
    assert [r["generation"] for r in saved] == list(range(2, 10))
    allowed = {_canonical(first), *(_canonical(r) for r in saved)}

    states = 0
    for state in crash_states(recording, random.Random(seed)):
        folder = state.tree.materialise(tmp_path / "after-crash")
        try:
            _boots(
                folder, kind, tmp_path / "mnt", allowed, _saves_returned_before(recording, state.k)
            )
        except Exception as exc:
            last = recording.ops[state.k - 1] if state.k else None
            raise AssertionError(
                f"seed {seed}: power cut before call {state.k}/{len(recording.ops)} "
                f"({state.how}; last call made: {last}): {exc}"
            ) from exc
        states += 1
    print(f"{kind}: {len(recording.ops)} calls, {states} distinct crash states booted")
    assert len(recording.ops) > 50 and states > 30


# -- the harness can fail ----------------------------------------------------------------------

OVERWRITE = """
import os, sys
from pathlib import Path
from edgefleet.agent.files import atomic_write
path, how = Path(sys.argv[1]) / "boot.json", sys.argv[2]
if how == "in place":
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
else:
    atomic_write(path, b"new")
"""


def _contents_after_crashes(tmp_path: Path, how: str) -> set[bytes | None]:
    root = tmp_path / "root"
    root.mkdir()
    atomic_write(root / "boot.json", b"old")
    recording = record(OVERWRITE, root, (str(root), how))
    seen: set[bytes | None] = set()
    for state in crash_states(recording, random.Random(0), subsets=4):
        ino = state.tree.lookup("boot.json")
        seen.add(None if ino is None else bytes(state.tree.files[ino]))
    return seen


def test_the_crash_model_drops_writes_that_were_never_fsynced(tmp_path: Path) -> None:
    """A negative control: overwriting in place can leave an empty file, and the model says so."""
    if shutil.which("strace") is None:
        pytest.skip("strace not found: install Debian's strace package (deps/apt-test.txt)")
    assert _contents_after_crashes(tmp_path, "in place") == {b"old", b"", b"new"}


def test_the_crash_model_sees_an_fsynced_rename_as_old_or_new(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace not found: install Debian's strace package (deps/apt-test.txt)")
    assert _contents_after_crashes(tmp_path, "atomic") == {b"old", b"new"}
