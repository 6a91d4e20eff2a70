"""The boot-control record: two checksummed copies, the newest valid one wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.agent.slots.record import COPIES, FORMAT, BootControl, Record, SlotInfo, _checksum


def _saved_twice(folder: Path) -> tuple[BootControl, Record, Record]:
    boot = BootControl(folder)
    first = boot.save(Record(active="A", slots={"A": SlotInfo("good", 1), "B": SlotInfo()}))
    second = boot.save(Record(active="A", trying="B", attempts_left=3))
    return boot, first, second


def _copy_holding(folder: Path, generation: int) -> Path:
    for name in COPIES:
        if json.loads((folder / name).read_text())["record"]["generation"] == generation:
            return folder / name
    raise AssertionError(f"no copy holds generation {generation}")


def test_a_fresh_folder_loads_a_fresh_record(tmp_path: Path) -> None:
    assert BootControl(tmp_path / "boot").load() == Record()


def test_each_save_is_the_next_generation_and_written_over_the_older_copy(tmp_path: Path) -> None:
    boot, first, second = _saved_twice(tmp_path)
    assert (first.generation, second.generation) == (1, 2)
    third = boot.save(Record(active="B"))
    assert third.generation == 3
    assert boot.load() == third
    generations = sorted(
        json.loads((tmp_path / n).read_text())["record"]["generation"] for n in COPIES
    )
    assert generations == [2, 3]  # 1 was the older copy, and 3 replaced it


def test_a_stale_record_still_saves_as_the_newest_generation(tmp_path: Path) -> None:
    boot, _, second = _saved_twice(tmp_path)
    stale = Record(generation=0, active="B")
    assert boot.save(stale).generation == second.generation + 1
    assert boot.load().active == "B"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda raw: raw.replace(b'"attempts_left": 3', b'"attempts_left": 9'), id="checksum"
        ),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: bytes(range(256)) * 3, id="garbage"),
        pytest.param(lambda raw: b"{}", id="other-json"),
    ],
)
def test_a_damaged_newest_copy_is_ignored_for_the_older_one(tmp_path: Path, damage) -> None:
    boot, first, second = _saved_twice(tmp_path)
    newest = _copy_holding(tmp_path, second.generation)
    damaged = damage(newest.read_bytes())
    assert damaged != newest.read_bytes()
    newest.write_bytes(damaged)
    assert boot.load() == first


def test_both_copies_damaged_gives_a_fresh_record(tmp_path: Path) -> None:
    boot, _, _ = _saved_twice(tmp_path)
    (tmp_path / COPIES[0]).write_bytes(b"\0" * 40)
    (tmp_path / COPIES[1]).write_text('{"format": "edgefleet-boot-control/1"')
    assert boot.load() == Record()


def test_a_save_after_damage_replaces_the_damaged_copy(tmp_path: Path) -> None:
    boot, first, second = _saved_twice(tmp_path)
    _copy_holding(tmp_path, first.generation).write_bytes(b"torn")
    third = boot.save(Record(active="B"))
    assert boot.load() == third
    _copy_holding(tmp_path, third.generation)
    _copy_holding(tmp_path, second.generation)  # the valid older copy was kept


def test_a_record_with_a_valid_checksum_but_an_unknown_slot_is_refused(tmp_path: Path) -> None:
    body = {"format": FORMAT, "record": {**Record(generation=5).to_dict(), "active": "C"}}
    (tmp_path / COPIES[0]).write_text(json.dumps({**body, "checksum": _checksum(body)}))
    assert BootControl(tmp_path).load() == Record()


@pytest.mark.parametrize("active", ["A", "B", None])
def test_inactive_is_never_the_active_slot(active: str | None) -> None:
    record = Record(active=active)
    assert record.inactive() in ("A", "B")
    assert record.inactive() != active


def test_the_record_round_trips_every_field(tmp_path: Path) -> None:
    record = Record(
        active="B",
        trying="A",
        attempts_left=2,
        slots={
            "A": SlotInfo("trying", 7, "sha256:" + "1" * 64),
            "B": SlotInfo("good", 6, "sha256:" + "2" * 64, bad_revisions=[5]),
        },
        last_failure={"revision": 5, "reason": "probe disagrees"},
    )
    saved = BootControl(tmp_path).save(record)
    assert BootControl(tmp_path).load() == saved
    assert saved.slots == record.slots and saved.last_failure == record.last_failure
