"""Folder and image slots: what is written reads back from the medium, or says which file is not."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgefleet.agent.slots import FolderSlots, ImageSlots, SlotCorrupt, SlotWriteError
from edgefleet.agent.slots.manifest import ManifestError
from tests.agent.slotsets import make_set

IMAGE_SIZE = 1 << 20


def _flip(path: Path, offset: int) -> None:
    """One byte changed on the medium (written and fsynced)."""
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x20]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _offset_of(path: Path, needle: bytes) -> int:
    at = path.read_bytes().find(needle)
    assert at >= 0, f"{needle!r} not found in {path}"
    return at


class Slots:
    """One backend under test, and how to damage a file of a slot on its medium."""

    def __init__(self, backend, corrupt: Callable[[str, str, bytes], None]) -> None:
        self.backend = backend
        self.corrupt = corrupt


def _folder_slots(tmp_path: Path) -> Slots:
    root = tmp_path / "slots"
    return Slots(FolderSlots(root), lambda slot, rel, _data: _flip(root / slot / rel, 10))


def _image_slots(tmp_path: Path) -> Slots:
    images = {}
    for slot in "AB":
        images[slot] = tmp_path / f"slot-{slot}.img"
        with images[slot].open("wb") as fh:
            fh.truncate(IMAGE_SIZE)
    backend = ImageSlots(images, tmp_path / "mnt")

    def corrupt(slot: str, _rel: str, data: bytes) -> None:
        _flip(images[slot], _offset_of(images[slot], data[:64]) + 10)

    return Slots(backend, corrupt)


@pytest.fixture(params=["folder", "image"])
def slots(request: pytest.FixtureRequest, tmp_path: Path) -> Slots:
    return {"folder": _folder_slots, "image": _image_slots}[request.param](tmp_path)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_a_written_set_verifies_and_opens_as_the_staged_folder(
    slots: Slots, tmp_path: Path
) -> None:
    staged = tmp_path / "staged"
    manifest = make_set(staged, "r1")
    slots.backend.write("B", staged, manifest)
    slots.backend.verify("B", manifest)
    assert slots.backend.read_manifest("B") == manifest
    assert _files(slots.backend.open("B")) == _files(staged)


@pytest.mark.parametrize("rel", ["models/detector.onnx", "desired.json"])
def test_a_byte_flipped_on_the_medium_fails_verification_naming_the_file(
    slots: Slots, tmp_path: Path, rel: str
) -> None:
    staged = tmp_path / "staged"
    manifest = make_set(staged, "r1")
    slots.backend.write("A", staged, manifest)
    slots.corrupt("A", rel, (staged / rel).read_bytes())
    with pytest.raises(SlotCorrupt) as caught:
        slots.backend.verify("A", manifest)
    assert rel in str(caught.value)
    assert manifest[rel] in str(caught.value)  # expected digest, beside the actual one


def test_a_write_replaces_the_old_set_entirely(slots: Slots, tmp_path: Path) -> None:
    old = make_set(tmp_path / "old", "r1", {"models/retired.onnx": b"retired model " * 50})
    new = make_set(tmp_path / "new", "r2")
    slots.backend.write("A", tmp_path / "old", old)
    slots.backend.write("A", tmp_path / "new", new)
    slots.backend.verify("A", new)
    assert _files(slots.backend.open("A")) == _files(tmp_path / "new")
    with pytest.raises(SlotCorrupt):
        slots.backend.verify("A", old)


def test_writing_one_slot_leaves_the_other_intact(slots: Slots, tmp_path: Path) -> None:
    a = make_set(tmp_path / "a", "r1")
    b = make_set(tmp_path / "b", "r2")
    slots.backend.write("A", tmp_path / "a", a)
    slots.backend.write("B", tmp_path / "b", b)
    slots.backend.clear("B")
    slots.backend.verify("A", a)
    assert _files(slots.backend.open("A")) == _files(tmp_path / "a")


def test_a_cleared_slot_holds_no_set(slots: Slots, tmp_path: Path) -> None:
    manifest = make_set(tmp_path / "staged", "r1")
    slots.backend.write("A", tmp_path / "staged", manifest)
    slots.backend.clear("A")
    for call in (lambda: slots.backend.verify("A", manifest), lambda: slots.backend.open("A")):
        with pytest.raises(SlotCorrupt, match="holds no"):
            call()


def test_a_staged_file_that_differs_from_its_manifest_is_refused(
    slots: Slots, tmp_path: Path
) -> None:
    staged = tmp_path / "staged"
    manifest = make_set(staged, "r1")
    (staged / "desired.json").write_text('{"revision": "tampered"}')
    with pytest.raises(SlotCorrupt, match=r"desired\.json"):
        slots.backend.write("A", staged, manifest)
    with pytest.raises(SlotCorrupt, match="holds no"):
        slots.backend.read_manifest("A")


@pytest.mark.parametrize("rel", ["../escape", "/etc/passwd", "models/../../x", ".edgefleet-x"])
def test_a_manifest_path_leaving_the_set_is_refused(slots: Slots, tmp_path: Path, rel: str) -> None:
    manifest = make_set(tmp_path / "staged", "r1")
    with pytest.raises(ManifestError, match="plain relative path"):
        slots.backend.write("A", tmp_path / "staged", {**manifest, rel: "sha256:" + "0" * 64})


def test_a_set_larger_than_the_image_fails_cleanly(tmp_path: Path) -> None:
    slots = _image_slots(tmp_path)
    small = make_set(tmp_path / "small", "r1")
    slots.backend.write("A", tmp_path / "small", small)
    big = make_set(tmp_path / "big", "r2", {"models/huge.onnx": os.urandom(IMAGE_SIZE)})
    with pytest.raises(SlotWriteError, match="larger partition or image") as caught:
        slots.backend.write("B", tmp_path / "big", big)
    assert caught.value.code == "slot_no_space"
    slots.backend.verify("A", small)


def test_a_set_that_outgrows_the_image_while_streaming_leaves_no_set(tmp_path: Path) -> None:
    """Under the up-front estimate, over the capacity once tar headers are counted."""
    slots = _image_slots(tmp_path)
    staged = tmp_path / "staged"
    make_set(staged, "r1")
    sizes = [p.stat().st_size for p in staged.rglob("*") if p.is_file()]
    estimate = 2 * 4096 + sum(-(-n // 512) * 512 + 512 for n in sizes)  # header, manifest
    near = IMAGE_SIZE - estimate - 2 * 512  # fits the estimate; the tar's end blocks do not
    manifest = make_set(staged, "r1", {"models/near.onnx": os.urandom(near)})
    with pytest.raises(SlotWriteError, match="does not fit"):
        slots.backend.write("B", tmp_path / "staged", manifest)
    with pytest.raises(SlotCorrupt, match="holds no set"):
        slots.backend.verify("B", manifest)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A real block device over an image file, when this machine lets us attach one."""
    backing = tmp_path / "loop.img"
    with backing.open("wb") as fh:
        fh.truncate(IMAGE_SIZE)
    if shutil.which("losetup") is None:
        pytest.skip("losetup not found: install util-linux (and run as root) for the loop test")
    done = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot attach a loop device (needs root and /dev/loop*): {done.stderr}")
    device = Path(done.stdout.strip())
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "--detach", str(device)], check=True)


def test_a_block_device_slot_verifies_what_the_medium_holds_not_the_page_cache(
    loop_device: tuple[Path, Path], tmp_path: Path
) -> None:
    device, backing = loop_device
    other = tmp_path / "b.img"
    with other.open("wb") as fh:
        fh.truncate(IMAGE_SIZE)
    slots = ImageSlots({"A": device, "B": other}, tmp_path / "mnt")
    manifest = make_set(tmp_path / "staged", "r1")
    # Held open so the block device keeps its page cache (the last close drops it).
    held = os.open(device, os.O_RDONLY)
    try:
        slots.write("A", tmp_path / "staged", manifest)
        slots.verify("A", manifest)
        assert _files(slots.open("A")) == _files(tmp_path / "staged")

        # Damage the backing file behind the loop device: the device's page cache still
        # holds the bytes as written, so only a read that goes to the medium notices.
        data = (tmp_path / "staged" / "models/detector.onnx").read_bytes()
        at = _offset_of(backing, data[:64]) + 10
        before = os.pread(held, 1, at)
        _flip(backing, at)
        assert os.pread(held, 1, at) == before, "the page cache did not keep the old byte"
        with pytest.raises(SlotCorrupt, match=r"models/detector\.onnx"):
            slots.verify("A", manifest)
    finally:
        os.close(held)


def test_where_o_direct_is_refused_cached_pages_are_dropped_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some file systems (FUSE, older tmpfs) refuse O_DIRECT: fsync, then drop the pages."""
    from edgefleet.agent.slots import medium

    real_open, real_fadvise, advised = os.open, os.posix_fadvise, []

    def refuse_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported here")
        return real_open(path, flags, *args)

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append(advice)
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(medium.os, "open", refuse_direct)
    monkeypatch.setattr(medium.os, "posix_fadvise", fadvise)
    manifest = make_set(tmp_path / "staged", "r1")
    slots = FolderSlots(tmp_path / "slots")
    slots.write("A", tmp_path / "staged", manifest)
    slots.verify("A", manifest)
    assert advised and set(advised) == {os.POSIX_FADV_DONTNEED}
    _flip(tmp_path / "slots" / "A" / "desired.json", 3)
    with pytest.raises(SlotCorrupt, match=r"desired\.json"):
        slots.verify("A", manifest)
