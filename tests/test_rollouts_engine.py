"""The rollout engine through the real app, on SQLite and PostgreSQL, with devices that
speak the device API from the test: waves in order and one commit each, the gates and
both failure policies, offline policies, windows, the concurrency cap, newcomers, the
operator's actions with who and why, a restart, and the lease that picks one driver.

The real-agent tests (tests/test_rollouts_e2e.py) show the same with agent processes;
these cover every branch of the engine quickly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import Prepared
from edgefleet.controller.db import session_scope
from edgefleet.controller.models import RolloutDevice
from edgefleet.controller.rollouts.lease import Lease, LostLease, current
from edgefleet.controller.settings import Settings
from tests.support.apiclient import Api, TestDevice
from tests.support.git import git

HOURLY = {"policies": {"interval_seconds": 3600}}
"""Devices report hourly: one that reported during the test counts as online."""
STARTED = "2026-11-25T00:00:00+00:00"


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={"rollout_tick_seconds": 0.1})


@pytest.fixture
def app_api(fast: Settings, prepared: Prepared) -> Iterator[Api]:
    app = create_app(fast)
    with TestClient(app, base_url="https://testserver") as client:
        assert prepared.new_admin_token is not None
        yield Api(client, prepared.new_admin_token, prepared.controller_id)
    app.state.rt.engine.dispose()


class Fleet:
    """Devices of profile ``vision`` at their sites, reporting as the test says."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.devices: dict[str, TestDevice] = {}
        api.profile("vision", {**HOURLY, "config": {"v": 1}})

    def enrol(self, n: int, site: str = "shop-1", report: bool = True) -> list[str]:
        if not any(s["name"] == site for s in self.api.ok("GET", "/sites", self.api.admin)):
            self.api.site(site)
        token = self.api.token(site=site, profile="vision")["token"]
        ids = []
        for _ in range(n):
            dev = self.api.device(token)
            self.devices[dev.id] = dev
            if report:
                self.report(dev.id, 1)
            ids.append(dev.id)
        return ids

    def desired(self, device_id: str) -> int:
        dev = self.devices[device_id]
        return self.api.ok("GET", f"/devices/{device_id}/desired", dev.access_token)["revision"]

    def report(self, device_id: str, applied: int, **extra: Any) -> None:
        dev = self.devices[device_id]
        body = {"applied_revision": applied, **extra}
        self.api.ok("POST", f"/devices/{device_id}/status", dev.access_token, json=body)

    def rolled_back(self, device_id: str, revision: int, applied: int) -> None:
        self.report(
            device_id,
            applied,
            last_update={
                "revision": revision,
                "outcome": "rolled_back",
                "reason": "probe: output y differs",
                "started_at": STARTED,
                "finished_at": STARTED,
            },
        )

    def hold(self, **spec: Any) -> None:
        body = {"name": "vision", "spec": {**HOURLY, **spec}, "hold": True}
        self.api.ok("POST", "/profiles", self.api.admin, json=body)

    def create(self, **spec: Any) -> dict[str, Any]:
        body = {"profile": "vision", "bake_seconds": 0, "seed": "s", **spec}
        return self.api.ok("POST", "/rollouts", self.api.admin, json=body)  # type: ignore[no-any-return]

    def rollout(self, rid: int) -> dict[str, Any]:
        return self.api.ok("GET", f"/rollouts/{rid}", self.api.admin)  # type: ignore[no-any-return]

    def wait(self, rid: int, check: Callable[[dict[str, Any]], bool], what: str) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + 20
        while True:
            r = self.rollout(rid)
            if check(r):
                return r
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {r}")
            time.sleep(0.05)

    def settle(self, ids: list[str], revision: int) -> None:
        """Every device in ``ids`` is told ``revision``: at once, or as soon as the
        engine's change reaches the desired-state caches (just after its commit)."""
        deadline = time.monotonic() + 10
        while {self.desired(d) for d in ids} != {revision}:
            assert time.monotonic() < deadline, {d: self.desired(d) for d in ids}
            time.sleep(0.05)

    def first_moved(self, ids: list[str]) -> str:
        """The one device told to run revision 2 (the canary), once it is."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = [d for d in ids if self.desired(d) == 2]
            if found:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.05)
        raise AssertionError("no device was moved to revision 2")

    def moved(self, rid: int) -> set[str]:
        return {d for d in self.devices if self.desired(d) == 2} if rid else set()

    def converge(
        self, rid: int, fail: frozenset[str] = frozenset(), away: frozenset[str] = frozenset()
    ) -> None:
        """Play the devices: each moved to 2 applies it (or rolls it back) once; those
        ``away`` say nothing."""
        done: set[str] = set(away)
        while self.rollout(rid)["state"] == "running":
            for d in self.devices:
                if d not in done and self.desired(d) == 2:
                    done.add(d)
                    if d in fail:
                        self.rolled_back(d, 2, 1)
                    else:
                        self.report(d, 2)
            time.sleep(0.05)


@pytest.fixture
def fleet(app_api: Api) -> Fleet:
    return Fleet(app_api)


def _repo_subjects(settings: Settings, site: str = "shop-1") -> list[str]:
    """Commit subjects of the site's fleet repository, oldest first."""
    repo = settings.data_dir / "gitops" / f"{site}.git"
    return git(repo, "log", "--reverse", "--format=%s", "main").splitlines()


def test_a_held_revision_rolls_out_wave_by_wave_with_one_commit_each(
    fleet: Fleet, fast: Settings
) -> None:
    ids = fleet.enrol(10)
    fleet.hold(config={"v": 2})
    assert {fleet.desired(d) for d in ids} == {1}  # held: nobody moved yet
    r = fleet.create(waves="1,50%,100%", reason="new detector")
    assert [w["devices"] for w in r["waves"]] == [1, 4, 5] and r["from_revision"] == 1
    first = fleet.wait(r["id"], lambda x: x["counts"]["updating"] == 1, "the canary to move")
    canary = fleet.first_moved(ids)
    assert first["waves"][1]["state"] == "pending"  # nothing else until the canary reports
    assert fleet.moved(r["id"]) == {canary}
    fleet.converge(r["id"])
    done = fleet.rollout(r["id"])
    assert done["state"] == "completed" and done["counts"]["succeeded"] == 10
    assert [w["state"] for w in done["waves"]] == ["passed"] * 3
    for a, b in zip(done["waves"], done["waves"][1:], strict=False):
        assert a["finished_at"] <= b["started_at"]
    profile = fleet.api.ok("GET", "/profiles/vision", fleet.api.admin)
    assert profile["released_revision"] == 2
    late = fleet.enrol(1)[0]  # enrolled after: gets what was released
    fleet.settle([late], 2)
    subjects = _repo_subjects(fast)
    rid = r["id"]
    waves = [s for s in subjects if s.startswith(f"Rollout {rid} wave")]
    assert waves == [
        f"Rollout {rid} wave 1/3 (1): vision to revision 2",
        f"Rollout {rid} wave 2/3 (50%): vision to revision 2",
        f"Rollout {rid} wave 3/3 (100%): vision to revision 2",
    ]
    assert done["waves"][0]["commits"]["shop-1"]
    actions = [e["action"] for e in done["events"]]
    assert actions[0] == "created" and actions[-1] == "completed"
    assert actions.count("wave_passed") == 3
    metrics = fleet.api.client.get("/metrics").text
    assert 'edgefleet_rollouts{state="completed"} 1.0' in metrics
    assert "edgefleet_rollout_wave_duration_seconds_count" in metrics


def test_a_failing_canary_rolls_back_and_nothing_beyond_it_moves(
    fleet: Fleet, fast: Settings
) -> None:
    ids = fleet.enrol(6)
    fleet.hold(config={"v": 2})
    r = fleet.create(waves="1,100%", reason="bad model")
    fleet.wait(r["id"], lambda x: x["counts"]["updating"] == 1, "the canary to move")
    canary = fleet.first_moved(ids)
    fleet.rolled_back(canary, 2, 1)
    done = fleet.wait(r["id"], lambda x: x["state"] == "rolled_back", "the rollback")
    assert "gate failed" in done["reason"] and "1 failed update" in done["reason"]
    fleet.settle(ids, 1)
    assert done["counts"]["pending"] == 5 and done["counts"]["failed"] == 1
    assert done["failures"][0]["device"] == canary
    assert "rolled back on the device: probe: output y differs" in done["failures"][0]["reason"]
    failed = [e for e in done["events"] if e["action"] == "device_failed"]
    assert [e["detail"]["device"] for e in failed] == [canary]
    subjects = _repo_subjects(fast)
    rid = r["id"]
    assert f"Rollout {rid} wave 1/2 (1): vision to revision 2" in subjects
    assert not any(s.startswith(f"Rollout {rid} wave 2") for s in subjects)
    assert subjects[-1] == f"Revert rollout {rid} (wave 1): vision back to revision 1"
    log = fleet.api.ok("GET", "/gitops/shop-1/log", fleet.api.admin)
    wave_commit = done["waves"][0]["commits"]["shop-1"]
    assert wave_commit[:12] in log[0]["body"] and canary in log[0]["body"]


def test_a_failed_gate_pauses_and_resuming_accepts_it(fleet: Fleet) -> None:
    ids = fleet.enrol(4)
    fleet.hold(config={"v": 2})
    r = fleet.create(waves="1,100%", on_failure="pause")
    fleet.wait(r["id"], lambda x: x["counts"]["updating"] == 1, "the canary to move")
    canary = fleet.first_moved(ids)
    fleet.rolled_back(canary, 2, 1)
    paused = fleet.wait(r["id"], lambda x: x["state"] == "paused", "the pause")
    assert paused["reason"].startswith("gate failed")
    assert fleet.moved(r["id"]) == {canary}  # paused where it was: the canary keeps 2
    fleet.api.ok(
        "POST", f"/rollouts/{r['id']}/resume", fleet.api.admin, json={"reason": "known flake"}
    )
    fleet.converge(r["id"], fail=frozenset({canary}))
    done = fleet.rollout(r["id"])
    assert done["state"] == "completed" and done["counts"]["succeeded"] == 3
    resumed = next(e for e in done["events"] if e["action"] == "resumed")
    assert (resumed["actor"], resumed["reason"]) == ("admin", "known flake")


def test_latency_and_error_gates_read_the_devices_status(fleet: Fleet) -> None:
    ids = fleet.enrol(3)
    fleet.hold(config={"v": 2})
    r = fleet.create(waves="1,100%", gates={"max_p95_ms": 50, "max_error_rate": 0.1})
    fleet.wait(r["id"], lambda x: x["counts"]["updating"] == 1, "the canary to move")
    canary = fleet.first_moved(ids)
    fleet.report(canary, 2, inference={"count": 200, "p95_ms": 80.0, "error_rate": 0.0})
    done = fleet.wait(r["id"], lambda x: x["state"] == "rolled_back", "the p95 gate")
    assert "p95 80 ms" in done["reason"] and done["waves"][0]["gate"]["ok"] is False
    fleet.settle([canary], 1)

    fleet.report(canary, 1)
    again = fleet.create(waves="1,100%", gates={"max_error_rate": 0.1}, seed="t")
    fleet.wait(again["id"], lambda x: x["counts"]["updating"] == 1, "the canary to move")
    canary = fleet.first_moved(ids)
    fleet.report(canary, 2, inference={"count": 100, "p95_ms": 5.0, "error_rate": 0.25})
    done = fleet.wait(again["id"], lambda x: x["state"] == "rolled_back", "the error gate")
    assert "error rate 25.00%" in done["reason"]


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_offline_devices_are_skipped_or_fail_the_rollout(fleet: Fleet, policy: str) -> None:
    online = fleet.enrol(3)
    offline = fleet.enrol(1, report=False)[0]  # never heard from
    fleet.hold(config={"v": 2})
    r = fleet.create(waves="100%", offline=policy)
    fleet.converge(r["id"], away=frozenset({offline}))
    done = fleet.rollout(r["id"])
    if policy == "skip":
        assert done["state"] == "completed" and done["counts"]["skipped"] == 1
        fleet.settle([offline], 2)  # it catches up when it returns
    else:
        assert done["state"] == "rolled_back" and "offline" in done["failures"][0]["reason"]
        assert done["counts"]["pending"] == 3  # the gate tripped before anyone moved
        fleet.settle([*online, offline], 1)


def test_offline_devices_are_waited_for_until_the_deadline(fleet: Fleet) -> None:
    fleet.enrol(1)
    late, gone = fleet.enrol(2, report=False)
    fleet.hold(config={"v": 2})
    r = fleet.create(
        waves="100%",
        offline="wait",
        offline_deadline_seconds=2,
        gates={"max_failures": 1, "min_success_ratio": 0.5},
    )
    fleet.wait(r["id"], lambda x: x["counts"]["updating"] == 3, "every device to move")
    fleet.report(late, 2)  # back before the deadline, and updated
    fleet.converge(r["id"], away=frozenset({gone}))
    done = fleet.rollout(r["id"])
    assert done["state"] == "completed"
    assert done["counts"]["succeeded"] == 2 and done["counts"]["failed"] == 1
    assert done["failures"][0]["device"] == gone
    assert "no outcome within 2 s (offline since it was moved)" in done["failures"][0]["reason"]
    fleet.settle([gone], 2)  # it converges when it returns


def test_closed_windows_hold_their_sites_until_they_open(fleet: Fleet) -> None:
    fleet.enrol(2, site="shop-1")
    closed = fleet.enrol(2, site="night")
    fleet.api.ok(
        "PUT",
        "/sites/night/maintenance-windows",
        fleet.api.admin,
        json={"windows": [_closed_window()]},
    )
    fleet.hold(config={"v": 2})
    r = fleet.create(waves="100%")
    waiting = fleet.wait(r["id"], lambda x: x["counts"]["updating"] == 2, "the open site")
    assert waiting["waves"][0]["waiting_for_window"] == ["night"]
    assert {fleet.desired(d) for d in closed} == {1}
    fleet.api.ok("PUT", "/sites/night/maintenance-windows", fleet.api.admin, json={"windows": []})
    fleet.converge(r["id"])
    assert fleet.rollout(r["id"])["state"] == "completed"
    fleet.settle(closed, 2)


def test_the_concurrency_cap_bounds_devices_updating_at_once(fleet: Fleet) -> None:
    ids = fleet.enrol(6)
    fleet.hold(config={"v": 2})
    r = fleet.create(waves="100%", concurrency=2)
    most = 0
    done: set[str] = set()
    while fleet.rollout(r["id"])["state"] == "running":
        moved = {d for d in ids if fleet.desired(d) == 2} - done
        most = max(most, len(moved))
        for d in moved:
            fleet.report(d, 2)
            done.add(d)
        time.sleep(0.05)
    assert most <= 2 and fleet.rollout(r["id"])["counts"]["succeeded"] == 6


def test_operator_actions_say_who_and_why_and_refuse_what_does_not_apply(
    fleet: Fleet,
) -> None:
    ids = fleet.enrol(4)
    fleet.hold(config={"v": 2})
    r = fleet.create(waves="1,100%", bake_seconds=3600)
    rid = r["id"]
    again = fleet.api.call("POST", "/rollouts", fleet.api.admin, json={"profile": "vision"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "rollout_active"
    release = fleet.api.call(
        "POST", "/profiles/vision/release", fleet.api.admin, json={"revision": 2}
    )
    assert release.status_code == 409
    fleet.wait(rid, lambda x: x["counts"]["updating"] == 1, "the canary to move")
    canary = fleet.first_moved(ids)
    fleet.report(canary, 2)
    fleet.wait(rid, lambda x: x["waves"][0]["state"] == "baking", "the bake")
    resume = fleet.api.call("POST", f"/rollouts/{rid}/resume", fleet.api.admin, json={})
    assert resume.status_code == 409 and resume.json()["error"]["code"] == "bad_state"
    aborted = fleet.api.ok(
        "POST", f"/rollouts/{rid}/abort", fleet.api.admin, json={"reason": "wrong week"}
    )
    assert aborted["state"] == "aborted" and fleet.desired(canary) == 2  # kept until rollback
    back = fleet.api.ok(
        "POST", f"/rollouts/{rid}/rollback", fleet.api.admin, json={"reason": "undo"}
    )
    assert back["state"] == "rolled_back" and back["reverted_devices"] == [canary]
    assert fleet.desired(canary) == 1
    events = [(e["actor"], e["action"], e["reason"]) for e in back["events"]]
    assert ("admin", "aborted", "wrong week") in events and (
        "admin",
        "rolled_back",
        "undo",
    ) in events
    members = fleet.api.ok("GET", f"/rollouts/{rid}/devices", fleet.api.admin)
    assert [(d["wave"], d["state"]) for d in members] == [(1, "reverted")] + [(2, "pending")] * 3
    assert members[0]["device"] == canary and members[0]["previous_revision"] is None
    only = fleet.api.ok(
        "GET", f"/rollouts/{rid}/devices", fleet.api.admin, params={"state": "pending"}
    )
    assert {d["device"] for d in only} == set(ids) - {canary}
    bad = fleet.api.call(
        "GET", f"/rollouts/{rid}/devices", fleet.api.admin, params={"state": "gone"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_state"
    missing = fleet.api.call("GET", "/rollouts/999", fleet.api.admin)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_rollout"
    listed = fleet.api.ok("GET", "/rollouts", fleet.api.admin, params={"state": "rolled_back"})
    assert [x["id"] for x in listed] == [rid]


def test_a_restarted_controller_resumes_without_moving_a_device_twice(
    fast: Settings, prepared: Prepared
) -> None:
    app = create_app(fast)
    with TestClient(app, base_url="https://testserver") as client:
        api = Api(client, prepared.new_admin_token or "", prepared.controller_id)
        fleet = Fleet(api)
        ids = fleet.enrol(4)
        fleet.hold(config={"v": 2})
        rid = fleet.create(waves="1,100%")["id"]
        fleet.wait(rid, lambda x: x["counts"]["updating"] == 1, "the canary to move")
        canary = fleet.first_moved(ids)
    with session_scope(app.state.rt.engine) as s:
        moved_at = s.get(RolloutDevice, (rid, canary)).moved_at  # type: ignore[union-attr]
    app.state.rt.engine.dispose()
    app = create_app(fast)
    with TestClient(app, base_url="https://testserver") as client:
        fleet.api = Api(client, prepared.new_admin_token or "", prepared.controller_id)
        fleet.converge(rid)
        done = fleet.rollout(rid)
        with session_scope(app.state.rt.engine) as s:
            assert s.get(RolloutDevice, (rid, canary)).moved_at == moved_at  # type: ignore[union-attr]
    app.state.rt.engine.dispose()
    assert done["state"] == "completed" and done["counts"]["succeeded"] == 4
    assert sum(e["action"] == "devices_moved" for e in done["events"]) == 2


def test_one_lease_holder_at_a_time_and_a_lapsed_one_is_fenced_off(
    fast: Settings, prepared: Prepared
) -> None:
    from edgefleet.controller.db import make_engine

    engine = make_engine(fast.effective_database_url)
    a, b = Lease(engine, 0.5, "a"), Lease(engine, 0.5, "b")
    try:
        assert a.acquire() and not b.acquire()
        assert current(engine)[0] == "a"
        time.sleep(0.6)
        assert b.acquire()  # a lapsed: b takes over
        with pytest.raises(LostLease), session_scope(engine) as s:
            a.fence(s)  # a's next step is refused
        b.release()
        assert current(engine) == (None, None) and a.acquire()
    finally:
        engine.dispose()


def _closed_window() -> str:
    """A one-minute window twelve hours away: closed now, whatever the time."""
    hour = (time.gmtime().tm_hour + 12) % 24
    return f"daily {hour:02d}:00-{hour:02d}:01"


def test_a_held_profile_is_released_by_hand(fleet: Fleet, fast: Settings) -> None:
    ids = fleet.enrol(2)
    fleet.hold(config={"v": 2})
    assert {fleet.desired(d) for d in ids} == {1}
    shown = fleet.api.ok("GET", "/profiles/vision", fleet.api.admin)
    assert (shown["revision"], shown["latest_revision"], shown["released_revision"]) == (2, 2, 1)
    out = fleet.api.ok(
        "POST", "/profiles/vision/release", fleet.api.admin, json={"revision": None, "reason": "go"}
    )
    assert out["released_revision"] is None and {fleet.desired(d) for d in ids} == {2}
    commit = out["gitops"]["commits"]["shop-1"]
    repo = fast.data_dir / "gitops" / "shop-1.git"
    body = git(repo, "log", "-1", "--format=%B", commit)
    assert "Why: admin released profile vision at the latest revision: go" in body
