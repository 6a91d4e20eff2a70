"""Wave rollouts end to end, every part real: controller processes over HTTPS (SQLite,
and two replicas on PostgreSQL), docker-registry in token mode, agents in direct mode
serving tiny ONNX models through their A/B slots, and the fleet repository in Git.

What an operator relies on: a good revision reaches every device wave by wave, each
wave only after the previous one passed, one commit per wave; a revision whose model
fails its golden probe stops at the canary, which rolls back on the device, and the
rollout reverts it in one commit that says what it reverts, touching nobody else; a
rollout survives its controller being killed, and a second replica takes over from a
dead driver within the lease; offline devices are waited for, skipped or failed as the
rollout says, and a device that was away gets the revision that is safe now when it
returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet.controller.rollouts.plan import Member, assign, parse_steps
from tests.support.fleet import SITE, Commit, Device, Fleet, parse_time, summary
from tests.support.processes import wait_for

ENGINE = "edgefleet"
"""The actor of the engine's own events."""
ADMIN = "admin"
"""The bootstrap operator the fleet's API client is."""
ACTIONS = {
    "created",
    "wave_started",
    "wave_baking",
    "wave_passed",
    "gate_failed",
    "paused",
    "resumed",
    "aborted",
    "rolled_back",
    "completed",
    "device_failed",
}


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Start fleets for this test; each is stopped (agents, controllers, registry) after."""
    started: list[Fleet] = []

    def make(size: int, **kw: Any) -> Fleet:
        fleet = Fleet(tmp_path / f"fleet-{len(started)}", size, **kw)
        started.append(fleet)
        fleet.start()
        print(f"fleet of {size}: " + ", ".join(f"{k} {v:.1f} s" for k, v in fleet.timings.items()))
        return fleet

    yield make
    for fleet in started:
        fleet.close()


# -- helpers ----------------------------------------------------------------------------


def _held(fleet: Fleet, version: str) -> int:
    """Apply ``detector:VERSION`` as the profile's next revision, held back: the
    followers keep what they run. Returns the new revision."""
    released = fleet.profile()["released_revision"] or fleet.profile()["revision"]
    answer = fleet.apply({"version": version}, hold=True)
    assert answer["revision"] == fleet.profile()["revision"]
    assert answer["released_revision"] == released, answer
    fleet.settled()
    return int(answer["revision"])


def _waves_of(fleet: Fleet, seed: str, steps: str) -> list[list[str]]:
    """The device ids each wave gets, by the planner's stable hash of ``seed``."""
    members = [Member(d.id, SITE) for d in fleet.devices]
    return [
        sorted(m.device_id for m in w.members) for w in assign(members, parse_steps(steps), seed)
    ]


def _by_id(fleet: Fleet) -> dict[str, Device]:
    return {d.id: d for d in fleet.devices}


def _records(fleet: Fleet, revision: int, device: str | None = None) -> list[dict[str, Any]]:
    return [u for u in fleet.updates(revision) if device is None or u["device"] == device]


def _actions(rollout: dict[str, Any]) -> list[str]:
    """The rollout's events, oldest first, limited to the actions the contract names
    (an implementation may log more, e.g. each batch of devices moved)."""
    return [e["action"] for e in rollout["events"] if e["action"] in ACTIONS]


def _check_events_actors(rollout: dict[str, Any]) -> None:
    """The operator created the rollout and did nothing else; every other state change
    was the engine's own."""
    assert rollout["events"][0]["action"] == "created", rollout["events"]
    assert rollout["events"][0]["actor"] == ADMIN == rollout["created_by"]
    for event in rollout["events"][1:]:
        assert event["actor"] == ENGINE, event


def _wave_commits(
    fleet: Fleet, rollout: dict[str, Any], since: str, profile: str = "vision"
) -> tuple[list[Commit], list[Commit]]:
    """The commits after ``since``, split into the rollout's wave commits (in order) and
    the rest; checks each wave commit's subject and that the wave names it."""
    commits = fleet.commits(since)
    rid, target, total = rollout["id"], rollout["revision"], rollout["waves_total"]
    waves, rest = [], []
    for commit in commits:
        if commit.subject.startswith(f"Rollout {rid} wave "):
            waves.append(commit)
        else:
            rest.append(commit)
    for commit in waves:
        number = _wave_number(commit)
        step = rollout["waves"][number - 1]["step"]
        assert commit.subject == (
            f"Rollout {rid} wave {number}/{total} ({step}): {profile} to revision {target}"
        ), commit.subject
    return waves, rest


def _check_commit_records(
    rollout: dict[str, Any], waves: list[Commit], killed: bool = False
) -> None:
    """Each wave names the commit that moved its devices (a rollback's message cites it).
    A controller killed between its Git write and recording the commit leaves that
    wave's record empty (``killed``); the repository still has the commit."""
    for commit in waves:
        recorded = rollout["waves"][_wave_number(commit) - 1]["commits"]
        allowed = [{SITE: commit.sha}, {}] if killed else [{SITE: commit.sha}]
        assert recorded in allowed, (commit.subject, recorded, commit.sha)


def _check_no_other_commit(rest: list[Commit]) -> None:
    """Besides the waves' commits, none: completing releases the revision the waves'
    devices already run, which changes no file (a completion commit is made only when
    it brings a device along: a skipped one, one enrolled since)."""
    assert [c.subject for c in rest] == [], [c.subject for c in rest]


def _wave_number(commit: Commit) -> int:
    return int(commit.subject.split(" wave ", 1)[1].split("/", 1)[0])


def _check_wave_order(rollout: dict[str, Any], bake: float) -> None:
    """Each wave started after the previous one passed, and baked at least ``bake``."""
    previous = None
    for wave in rollout["waves"]:
        started, baking, finished = (
            parse_time(wave["started_at"]),
            parse_time(wave["bake_until"]),
            parse_time(wave["finished_at"]),
        )
        assert wave["state"] == "passed" and wave["gate"]["ok"], wave
        assert started and baking and finished, wave
        assert started + _seconds(bake) <= baking <= finished, wave
        if previous is not None:
            assert previous["state"] == "passed"
            assert parse_time(previous["finished_at"]) <= started, (previous, wave)
        previous = wave


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _check_completed_everywhere(
    fleet: Fleet, rollout: dict[str, Any], version: str = "2", devices: list[Device] | None = None
) -> None:
    """Every device runs the target (model ``version``), by its own account, the
    controller's and its runner's answers, and the repository gives every device the
    target; each applied it exactly once."""
    target = rollout["revision"]
    chosen = fleet.devices if devices is None else devices
    fleet.wait_serving(target, chosen, timeout=60)
    fleet.check_answers(version, chosen)
    for device in chosen:
        assert fleet.desired_revision(device.id) == target, device.id
    time.sleep(2)  # a second pass over the desired state (unpinned, same revision) adds none
    for device in chosen:
        records = _records(fleet, target, device.id)
        assert [r["outcome"] for r in records] == ["committed"], (device.id, records)


# -- a good revision, 30 agents, four waves -------------------------------------------


def test_good_revision_reaches_thirty_agents_wave_after_wave(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(30)
    fleet.push(2, "2")
    target = _held(fleet, "2")
    assert target == 2
    start = fleet.head()
    # Held: no device was given revision 2.
    assert all(fleet.desired_revision(d.id) == 1 for d in fleet.devices)

    began = time.monotonic()
    steps = "1,10%,50%,100%"
    created = fleet.create_rollout(
        revision=2,
        waves=steps,
        bake_seconds=1,
        gates={"max_failures": 0},
        seed="thirty",
        update_timeout_seconds=120,
        reason="detector 2",
    )
    assert created["state"] == "running" and created["from_revision"] == 1
    assert created["devices"] == 30 and created["waves_total"] == 4
    assert [w["devices"] for w in created["waves"]] == [1, 2, 12, 15]
    rollout = fleet.wait_rollout(created["id"], "completed", timeout=200)
    print(f"rollout of 30 devices in 4 waves: {time.monotonic() - began:.1f} s")

    assert rollout["counts"] == {
        "pending": 0,
        "updating": 0,
        "succeeded": 30,
        "failed": 0,
        "skipped": 0,
        "reverted": 0,
    }, summary(rollout)
    assert [w["counts"]["succeeded"] for w in rollout["waves"]] == [1, 2, 12, 15]
    assert rollout["finished_at"] and rollout["current_wave"] in (4, None)
    _check_wave_order(rollout, bake=1)
    assert fleet.profile()["released_revision"] == 2

    # One commit per wave, the devices of that wave only, in the planner's order; then
    # the completion commit (checked last), and nothing else.
    waves, rest = _wave_commits(fleet, rollout, start)
    assert [_wave_number(c) for c in waves] == [1, 2, 3, 4], [c.subject for c in waves]
    planned = _waves_of(fleet, "thirty", steps)
    assert [len(c.devices) for c in waves] == [1, 2, 12, 15]
    assert [c.devices for c in waves] == planned
    moved: set[str] = set()
    for commit in waves:
        moved.update(commit.devices)
        for device in fleet.devices:  # at this commit: the waves so far on 2, the rest on 1
            expected = 2 if device.id in moved else 1
            assert fleet.desired_revision(device.id, commit.sha) == expected, (commit, device.id)
    assert moved == {d.id for d in fleet.devices}

    # Each device started its update only after its wave started, so after the previous
    # wave passed.
    wave_of = {device: n for n, ids in enumerate(planned, start=1) for device in ids}
    for record in _records(fleet, 2):
        wave = rollout["waves"][wave_of[record["device"]] - 1]
        assert parse_time(record["started_at"]) >= parse_time(wave["started_at"]), (record, wave)
        if wave["number"] > 1:
            before = rollout["waves"][wave["number"] - 2]
            assert parse_time(record["started_at"]) >= parse_time(before["finished_at"])

    assert _actions(rollout) == [
        "created",
        *[a for _ in range(4) for a in ("wave_started", "wave_baking", "wave_passed")],
        "completed",
    ], _actions(rollout)
    _check_events_actors(rollout)
    _check_completed_everywhere(fleet, rollout)
    _check_commit_records(rollout, waves)
    _check_no_other_commit(rest)


# -- a revision whose model fails its probe -------------------------------------------


def test_a_model_failing_its_probe_stops_at_the_canary_and_is_reverted(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(6)
    fleet.push_bad("bad")
    target = _held(fleet, "bad")
    start = fleet.head()
    steps = "1,50%,100%"
    [canary], *_ = _waves_of(fleet, "bad", steps)
    others = [d for d in fleet.devices if d.id != canary]

    created = fleet.create_rollout(
        revision=target,
        waves=steps,
        bake_seconds=1,
        gates={"max_failures": 0},
        on_failure="rollback",
        seed="bad",
        update_timeout_seconds=120,
    )
    rollout = fleet.wait_rollout(created["id"], "rolled_back", timeout=120)
    print(summary(rollout))

    # The canary tried it, failed the golden probe and rolled back on the device.
    records = _records(fleet, target)
    assert [(r["device"], r["outcome"]) for r in records] == [(canary, "rolled_back")], records
    detail = fleet.get(f"/updates/{records[0]['id']}")
    assert [c["name"] for c in detail["evidence"]["failed_checks"]] == ["probe"], detail
    # The gate tripped on it; the later waves never started.
    assert "gate_failed" in _actions(rollout) and "rolled_back" in _actions(rollout)
    assert _actions(rollout).index("gate_failed") < _actions(rollout).index("rolled_back")
    assert rollout["reason"], rollout
    first, *later = rollout["waves"]
    assert first["state"] == "failed" and first["gate"] and not first["gate"]["ok"], first
    assert all(w["state"] == "pending" and w["started_at"] is None for w in later), later
    assert rollout["counts"]["pending"] == len(others), summary(rollout)
    assert rollout["counts"]["succeeded"] == 0 and rollout["counts"]["updating"] == 0
    _check_events_actors(rollout)

    # Every device runs the previous revision; nobody else ever heard of the bad one.
    fleet.wait_serving(1, timeout=60)
    fleet.check_answers("1")
    for device in others:
        assert _records(fleet, target, device.id) == []
    assert fleet.profile()["released_revision"] == 1

    # The repository: the wave-1 commit moved the canary only, the revert moved it back
    # and names the commit it reverts; no other device's files changed.
    commits = fleet.commits(start)
    assert len(commits) == 2, [c.subject for c in commits]
    wave1, back = commits
    assert wave1.subject == (
        f"Rollout {rollout['id']} wave 1/3 (1): vision to revision {target}"
    ), wave1.subject
    assert wave1.devices == [canary] and back.devices == [canary]
    assert fleet.desired_revision(canary, wave1.sha) == target
    assert back.subject == f"Revert rollout {rollout['id']} (wave 1): vision back to revision 1"
    assert wave1.sha[:12] in back.body, back.body
    assert all(fleet.desired_revision(d.id) == 1 for d in fleet.devices)
    # The events say which device failed.
    failed = [e for e in rollout["events"] if e["action"] == "device_failed"]
    assert failed and canary in json.dumps(failed), rollout["events"]


# -- the controller killed mid-wave ---------------------------------------------------


def test_a_rollout_survives_its_controller_killed_mid_wave(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(8)
    fleet.push(2, "2")
    target = _held(fleet, "2")
    start = fleet.head()
    created = fleet.create_rollout(
        revision=target,
        waves="1,50%,100%",
        bake_seconds=2,
        seed="kill",
        update_timeout_seconds=120,
    )
    rid = created["id"]
    seen = fleet.wait_wave(rid, 2, ("updating",), timeout=90)
    assert seen["state"] == "running" and seen["current_wave"] == 2, summary(seen)
    fleet.controller.kill()
    killed_at = time.monotonic()
    time.sleep(1)
    fleet.controller.start()  # same data directory, same port: the devices come back to it
    fleet.reconnect()
    rollout = fleet.wait_rollout(rid, "completed", timeout=120)
    print(f"completed {time.monotonic() - killed_at:.1f} s after the kill")

    assert rollout["counts"]["succeeded"] == 8 and rollout["counts"]["skipped"] == 0, summary(
        rollout
    )
    assert rollout["counts"]["failed"] == 0
    assert [w["devices"] for w in rollout["waves"]] == [1, 3, 4]
    _check_wave_order(rollout, bake=2)
    # Nothing happened twice: three waves started, each moved its devices in one commit.
    assert _actions(rollout).count("wave_started") == 3, _actions(rollout)
    waves, rest = _wave_commits(fleet, rollout, start)
    assert [_wave_number(c) for c in waves] == [1, 2, 3], [c.subject for c in waves]
    assert sorted(d for c in waves for d in c.devices) == sorted(d.id for d in fleet.devices)
    _check_completed_everywhere(fleet, rollout)
    _check_commit_records(rollout, waves, killed=True)
    _check_no_other_commit(rest)


# -- two replicas on PostgreSQL, the driver killed ---------------------------------------


@pytest.mark.usefixtures("postgres_available")
def test_one_replica_drives_and_the_other_takes_over_within_the_lease(
    make_fleet: Callable[..., Fleet], postgres_url: str, tmp_path: Path
) -> None:
    lease = 3.0
    fleet = make_fleet(
        4,
        database_url=postgres_url,
        replicas=2,
        rollout_lease_seconds=lease,
        gitops_root=str(tmp_path / "gitops"),
    )
    a, b = fleet.controllers

    def holder() -> tuple[str, Any]:
        views = {fleet.engine(ctl)["holder"] for ctl in fleet.alive_controllers()}
        assert len(views) == 1, views  # every replica names the same driver
        [name] = views
        return name, fleet.holder_of(name)

    def driving() -> tuple[str, Any] | None:
        name, ctl = holder()
        return (name, ctl) if ctl is not None else None

    name, driver = wait_for(driving, 20, "a replica to drive")
    for _ in range(8):  # exactly one drives, and keeps driving
        assert holder() == (name, driver)
        time.sleep(0.25)
    survivor = b if driver is a else a

    fleet.push(2, "2")
    target = _held(fleet, "2")
    start = fleet.head()
    created = fleet.create_rollout(
        revision=target, waves="1,100%", bake_seconds=3, seed="replicas", update_timeout_seconds=120
    )
    rid = created["id"]
    fleet.wait_wave(rid, 1, ("baking",), timeout=60)
    assert holder() == (name, driver)

    driver.kill()
    killed = time.monotonic()
    assert fleet.balancer is not None
    fleet.balancer.switch(survivor.port)
    with fleet.client(survivor) as c:
        took = wait_for(
            lambda: fleet.holder_of(c.get("/rollouts/engine").json()["holder"]) is survivor,
            lease + 10,
            "the surviving replica to take the lease",
            every=0.1,
        )
        assert took
        takeover = time.monotonic() - killed
        print(f"takeover {takeover:.1f} s after the kill (lease {lease} s)")
        # The lease lapses at most ``lease`` after the driver's last renewal and a standby
        # tries every third of it: twice the lease leaves room for a loaded machine.
        assert takeover <= 2 * lease, takeover
        rollout = fleet.wait_rollout(rid, "completed", timeout=90, client=c)
    fleet.reconnect(survivor)

    assert rollout["counts"]["succeeded"] == 4, summary(rollout)
    _check_wave_order(rollout, bake=3)
    _check_events_actors(rollout)
    waves, rest = _wave_commits(fleet, rollout, start)
    assert [_wave_number(c) for c in waves] == [1, 2]
    _check_completed_everywhere(fleet, rollout)
    _check_commit_records(rollout, waves)
    _check_no_other_commit(rest)


# -- offline devices --------------------------------------------------------------------


def _offline(fleet: Fleet, seed: str, steps: str, count: int) -> tuple[str, list[Device]]:
    """Stop ``count`` agents of the last wave (never the canary); the canary's id and the
    stopped devices, once the controller counts them offline."""
    waves = _waves_of(fleet, seed, steps)
    by_id = _by_id(fleet)
    away = [by_id[i] for i in waves[-1][:count]]
    for device in away:
        device.stop()
    fleet.wait_offline(count)
    return waves[0][0], away


def test_offline_wait_succeeds_for_a_device_back_in_time_and_fails_one_past_the_deadline(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(4)
    fleet.push(2, "2")
    target = _held(fleet, "2")
    steps = "1,100%"
    _canary, (late, back) = _offline(fleet, "wait", steps, 2)
    deadline = 20  # room for the returning agent to start and update on a loaded machine
    created = fleet.create_rollout(
        revision=target,
        waves=steps,
        bake_seconds=1,
        offline="wait",
        offline_deadline_seconds=deadline,
        gates={"max_failures": 1, "min_success_ratio": 0.5},
        seed="wait",
        update_timeout_seconds=120,
    )
    rid = created["id"]
    fleet.wait_wave(rid, 2, ("updating",), timeout=60)
    back.start()  # back well before the deadline: it updates and counts
    rollout = fleet.wait_rollout(rid, "completed", timeout=90)

    wave = rollout["waves"][1]
    assert wave["counts"]["succeeded"] == 2 and wave["counts"]["failed"] == 1, summary(rollout)
    assert rollout["counts"]["succeeded"] == 3 and rollout["counts"]["failed"] == 1
    # The wave waited for the absent device up to its deadline, not less.
    assert parse_time(wave["bake_until"]) - _seconds(1) >= parse_time(
        wave["started_at"]
    ) + _seconds(deadline), wave
    assert [r["outcome"] for r in _records(fleet, target, back.id)] == ["committed"]
    assert _records(fleet, target, late.id) == []

    # The device that stayed away comes back to the revision released meanwhile.
    late.start()
    _check_completed_everywhere(fleet, rollout)
    # The events say which device failed.
    failed = [e for e in rollout["events"] if e["action"] == "device_failed"]
    assert failed and late.id in json.dumps(failed), rollout["events"]


def test_offline_skip_completes_and_the_skipped_device_catches_up_on_return(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(3)
    fleet.push(2, "2")
    target = _held(fleet, "2")
    start = fleet.head()
    steps = "1,100%"
    _canary, [away] = _offline(fleet, "skip", steps, 1)
    created = fleet.create_rollout(
        revision=target,
        waves=steps,
        bake_seconds=1,
        offline="skip",
        seed="skip",
        update_timeout_seconds=120,
    )
    rollout = fleet.wait_rollout(created["id"], "completed", timeout=90)
    assert rollout["counts"]["skipped"] == 1 and rollout["counts"]["succeeded"] == 2, summary(
        rollout
    )
    assert rollout["waves"][1]["counts"]["skipped"] == 1
    waves, rest = _wave_commits(fleet, rollout, start)
    _check_commit_records(rollout, waves)
    assert all(away.id not in c.devices for c in waves), [(c.subject, c.devices) for c in waves]
    assert _records(fleet, target, away.id) == []
    # Released at completion: the completion commit gives the skipped device the target.
    assert [(c.subject, c.devices) for c in rest] == [
        (f"Rollout {rollout['id']} complete: vision released at revision {target}", [away.id])
    ], [(c.subject, c.devices) for c in rest]
    assert fleet.desired_revision(away.id) == target

    away.start()
    _check_completed_everywhere(fleet, rollout)


def test_offline_fail_trips_the_gate_and_rolls_back(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet(3)
    fleet.push(2, "2")
    target = _held(fleet, "2")
    start = fleet.head()
    steps = "1,100%"
    canary, [away] = _offline(fleet, "fail", steps, 1)
    created = fleet.create_rollout(
        revision=target,
        waves=steps,
        bake_seconds=1,
        offline="fail",
        on_failure="rollback",
        gates={"max_failures": 0},
        seed="fail",
        update_timeout_seconds=120,
    )
    rollout = fleet.wait_rollout(created["id"], "rolled_back", timeout=90)
    assert "gate_failed" in _actions(rollout), _actions(rollout)
    assert rollout["waves"][0]["state"] == "passed"
    assert rollout["waves"][1]["state"] == "failed", summary(rollout)
    # The canary had the target and is back on the previous revision; so is everybody.
    assert [r["outcome"] for r in _records(fleet, target, canary)] == ["committed"]
    online = [d for d in fleet.devices if d is not away]
    fleet.wait_serving(1, online, timeout=60)
    fleet.check_answers("1", online)
    assert all(fleet.desired_revision(d.id) == 1 for d in fleet.devices)
    assert fleet.profile()["released_revision"] == 1
    assert all(away.id not in c.devices for c in fleet.commits(start))

    # Back, the device that was offline runs the previous revision and never tried the target.
    away.start()
    fleet.wait_serving(1, timeout=60)
    fleet.check_answers("1", [away])
    time.sleep(2)
    assert _records(fleet, target, away.id) == []
