"""``edgefleet agent status`` reads the device's own disk (boot-control record, evidence
bundles) without a controller, and ``edgefleet agent run`` still goes to the agent's own
entry point before Typer loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgefleet.agent.buffer import Buffer, Policy
from edgefleet.agent.files import write_json
from edgefleet.agent.slots.record import BootControl, Record, SlotInfo

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "160"}
    return subprocess.run([*EDGEFLEET, *args], capture_output=True, text=True, timeout=60, env=env)


def device_after_a_rollback(state: Path) -> None:
    slots = {
        "A": SlotInfo(state="good", revision=3),
        "B": SlotInfo(state="bad", revision=4, reason="probe differs", bad_revisions=[4]),
    }
    BootControl(state / "slots").save(Record(active="A", slots=slots))
    (state / "evidence").mkdir()
    older = {"revision": 3, "outcome": "committed", "slot": "A", "reason": ""}
    write_json(
        state / "evidence" / "3-20300301T090000Z.json",
        {**older, "finished_at": "2030-03-01T09:00:09+00:00", "failed_checks": []},
    )
    write_json(
        state / "evidence" / "4-20300301T100000Z.json",
        {
            "revision": 4,
            "outcome": "rolled_back",
            "slot": "B",
            "reason": "health check probe failed",
            "started_at": "2030-03-01T10:00:00+00:00",
            "finished_at": "2030-03-01T10:00:09+00:00",
            "failed_checks": [{"name": "probe", "ok": False, "detail": "scores differ by 0.41"}],
        },
    )


def test_agent_status_shows_both_slots_the_active_one_and_the_last_outcome(
    tmp_path: Path,
) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    device_after_a_rollback(tmp_path / "state")
    out = run("agent", "status", "--state-dir", str(tmp_path / "state"))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "slots (active: A)" in text
    assert "A * │ good │ 3" in text and "B │ bad │ 4 │ probe differs" in text
    assert "last update: revision 4 in slot B rolled_back at 2030-03-01T10:00:09+00:00" in text
    assert "health check probe failed" in text and "probe: scores differ by 0.41" in text
    assert "results: none stored yet" in text

    as_json = json.loads(
        run("agent", "status", "--state-dir", str(tmp_path / "state"), "-o", "json").stdout
    )
    assert as_json["active_slot"] == "A" and as_json["last_update"]["revision"] == 4
    assert [(s["name"], s["state"]) for s in as_json["slots"]] == [("A", "good"), ("B", "bad")]


def test_agent_status_shows_what_waits_in_the_result_buffer(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    with Buffer(tmp_path / "results" / "results.db") as buffer:
        buffer.configure(1024 * 1024, Policy.DROP_OLDEST, rate=2.0)
        for start in range(0, 6000, 1000):
            batch = range(start, start + 1000)
            buffer.append_many([{"payload": {"i": i, "pad": "x" * 200}} for i in batch])
        buffer.delete_through(buffer.read_from(0)[9].seq)
        stats = buffer.stats()
    out = run("agent", "status", "--state-dir", str(tmp_path), "-o", "json")
    found = json.loads(out.stdout)["buffer"]
    assert found["depth"] == stats.depth and found["drops"] == stats.drops
    assert found["drops"]["oldest"] > 0 and found["acked"] > 0 and found["cap_bytes"] == 1 << 20
    text = " ".join(run("agent", "status", "--state-dir", str(tmp_path)).stdout.split())
    assert f"results: {stats.depth} waiting for the controller" in text
    assert f"dropped: {stats.drops['oldest']} oldest" in text and "holds about" in text


def test_agent_status_of_a_fresh_device_and_of_a_wrong_folder(tmp_path: Path) -> None:
    out = run("agent", "status", "--state-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "last update: none on record" in out.stdout and "empty" in out.stdout
    missing = run("agent", "status", "--state-dir", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "is not an agent state directory" in missing.stderr


def test_agent_run_is_still_the_agents_own_entry_point() -> None:
    out = run("agent", "run", "--help")
    assert out.returncode == 0, out.stderr
    assert "--state-dir" in out.stdout and "usage:" in out.stdout  # argparse, not Typer
    listed = run("agent", "--help")
    assert listed.returncode == 0 and "status" in listed.stdout and "run" in listed.stdout
