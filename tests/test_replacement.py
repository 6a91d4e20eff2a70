"""Hardware replacement and device names through the real app, on SQLite and PostgreSQL:
an operator's replacement (one transaction, one commit, the old device's credentials
dead at once), every refusal changing nothing, names unique per site and the search
box, replacement-mode tokens (at enrolment, and at approval), the history walk, and a
rollout running over the replaced device."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.services import replacement
from edgefleet.controller.settings import Settings, load_settings
from edgefleet.errors import Conflict
from tests.support.apiclient import Api, TestDevice, new_key

STARTED = "2030-01-01T00:00:00+00:00"
HOURLY = {"policies": {"interval_seconds": 3600}}


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """The suite's settings, with the rollout engine's timer short."""
    return load_settings(
        data_dir=tmp_path / "controller",
        database_url=database_url,
        device_interval_seconds=1,
        last_seen_flush_seconds=0.2,
        gitops_debounce_seconds=0.2,
        rollout_tick_seconds=0.1,
    )


def device(api: Api, device_id: str) -> dict[str, Any]:
    return api.ok("GET", f"/devices/{device_id}", api.admin)  # type: ignore[no-any-return]


def desired(api: Api, dev: TestDevice) -> dict[str, Any]:
    return api.ok("GET", f"/devices/{dev.id}/desired", dev.access_token)  # type: ignore[no-any-return]


def report_update(api: Api, dev: TestDevice, revision: int, outcome: str = "rolled_back") -> None:
    body = {
        "outcome": {
            "revision": revision,
            "outcome": outcome,
            "slot": "B",
            "reason": "probe: output differs",
            "started_at": STARTED,
            "finished_at": STARTED,
        }
    }
    api.ok("POST", f"/devices/{dev.id}/updates", dev.access_token, json=body)


def replace(api: Api, old: str, new: str, token: str | None = None, **body: Any) -> Any:
    return api.call(
        "POST", f"/devices/{old}/replace", token or api.admin, json={"new": new, **body}
    )


def audit(api: Api, action: str) -> list[dict[str, Any]]:
    return [a for a in api.ok("GET", "/audit", api.admin) if a["action"] == action]


def wait_commit(api: Api, repository: str, subject_start: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        log = api.ok("GET", f"/gitops/{repository}/log", api.admin)
        found = [c for c in log if c["subject"].startswith(subject_start)]
        if found:
            return found[0]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, [c["subject"] for c in log]
        time.sleep(0.05)


@pytest.fixture
def shop(api: Api) -> dict[str, Any]:
    """Site shop-1 with profile vision (two revisions); the old device till-3 with its
    labels, pinned to revision 1, with an update report of its own; a new device
    enrolled with the site's plain token, which gives it labels of its own."""
    api.site("shop-1")
    api.profile("vision", {"config": {"v": 1}})
    api.profile("vision", {"config": {"v": 2}})
    first = api.token(site="shop-1", labels={"zone": "front", "batch": "2021"})["token"]
    old = api.device(first, serial="SN-OLD", hostname="till3.shop1")
    api.ok(
        "POST", f"/devices/{old.id}/assign", api.admin, json={"profile": "vision", "revision": 1}
    )
    api.ok("POST", f"/devices/{old.id}/rename", api.admin, json={"name": "till-3"})
    report_update(api, old, 1)
    spare = api.token(site="shop-1", labels={"batch": "2025", "hw": "pi5"})["token"]
    new = api.device(spare, serial="SN-NEW", hostname="spare.shop1")
    return {"old": old, "new": new, "spare_token": spare}


def test_replacement_hands_over_the_place_and_decommissions_the_old(
    api: Api, shop: dict[str, Any]
) -> None:
    old, new = shop["old"], shop["new"]
    assert desired(api, old)["revision"] == 1
    r = replace(api, old.id, new.id, reason="screen cracked")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == new.id and out["replaces"] == old.id
    assert out["name"] == "till-3"
    # The old device's labels win where both have a key; the new one's others stay.
    assert out["labels"] == {"zone": "front", "batch": "2021", "hw": "pi5"}
    assert (out["profile"], out["profile_revision"], out["site"]) == ("vision", 1, "shop-1")
    assert out["replaced"]["state"] == "decommissioned"
    assert out["replaced"]["replaced_by"] == new.id
    assert out["gitops"]["commits"]["shop-1"]
    # The old credentials are dead at once; the new device is told the old one's revision.
    refused = api.call("GET", f"/devices/{old.id}/desired", old.access_token)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "device_decommissioned"
    assert desired(api, new)["revision"] == 1
    assert device(api, old.id)["replaced_by"] == new.id
    # One commit, naming both and why.
    commit = wait_commit(api, "shop-1", f"Replace {old.id} with {new.id}: screen cracked")
    assert commit["commit"] == out["gitops"]["commits"]["shop-1"]
    assert "admin replaced device" in commit["body"] and "till-3" in commit["body"]
    # Audited: the replacement and the decommission, by the operator.
    (rec,) = audit(api, "device.replace")
    assert rec["target"] == new.id and rec["detail"]["old"] == old.id
    assert rec["detail"]["reason"] == "screen cracked" and rec["actor"] == "admin"
    decommissions = audit(api, "device.decommission")
    assert [a["target"] for a in decommissions] == [old.id]
    # History: the old device's update report stays under its id, shown on the new page.
    hist = api.ok("GET", f"/devices/{new.id}/history", api.admin)
    assert [d["id"] for d in hist["lineage"]] == [old.id, new.id]
    assert hist["lineage"][0]["decommissioned_at"] and hist["lineage"][0]["name"] == "till-3"
    assert [(u["device"], u["revision"]) for u in hist["updates"]] == [(old.id, 1)]
    old_updates = api.ok("GET", f"/updates?device={old.id}", api.admin)
    assert len(old_updates) == 1
    # The old device's page walks forward to its replacement.
    back = api.ok("GET", f"/devices/{old.id}/history", api.admin)
    assert [d["id"] for d in back["lineage"]] == [old.id, new.id]


def test_a_chain_of_replacements_shows_every_predecessor(api: Api, shop: dict[str, Any]) -> None:
    old, new = shop["old"], shop["new"]
    assert replace(api, old.id, new.id).status_code == 200
    report_update(api, new, 1, outcome="committed")
    third = api.device(shop["spare_token"])
    r = replace(api, new.id, third.id, reason="again")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "till-3" and r.json()["replaces"] == new.id
    hist = api.ok("GET", f"/devices/{third.id}/history", api.admin)
    assert [d["id"] for d in hist["lineage"]] == [old.id, new.id, third.id]
    assert {u["device"] for u in hist["updates"]} == {old.id, new.id}


def test_refused_replacements_change_nothing(api: Api, shop: dict[str, Any]) -> None:
    old, new = shop["old"], shop["new"]
    api.site("shop-2")
    elsewhere = api.device(api.token(site="shop-2")["token"])
    waiting = api.enrol(api.token(site="shop-1", require_approval=True)["token"]).json()
    gone = api.device(shop["spare_token"])
    api.ok("POST", f"/devices/{gone.id}/decommission", api.admin)
    operator = api.user("op", "operator")
    viewer = api.user("view", "viewer")
    installer = api.user("inst", "installer", site="shop-1")
    everyone = [old.id, new.id, elsewhere.id, waiting["device_id"], gone.id]
    before = {d: device(api, d) for d in everyone}
    cases = [
        ((old.id, old.id), 400, "same_device"),
        (("dev-nope", new.id), 404, "unknown_device"),
        ((old.id, "dev-nope"), 404, "unknown_device"),
        ((gone.id, new.id), 409, "invalid_transition"),
        ((old.id, gone.id), 409, "invalid_transition"),
        ((old.id, waiting["device_id"]), 409, "not_enrolled"),
        ((waiting["device_id"], new.id), 409, "invalid_transition"),
        ((old.id, elsewhere.id), 409, "other_site"),
    ]
    for (a, b), status, code in cases:
        r = replace(api, a, b, reason="x")
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (a, b, r.text)
        assert r.json()["error"]["message"]
    for who in (viewer, installer):
        assert replace(api, old.id, new.id, token=who).status_code == 403
    body = api.call("POST", f"/devices/{old.id}/replace", api.admin, json={"reason": "no new"})
    assert body.status_code == 422
    assert {d: device(api, d) for d in everyone} == before
    assert audit(api, "device.replace") == []
    # Once replaced, neither can be part of another replacement the same way.
    assert replace(api, old.id, new.id, token=operator).status_code == 200
    third = api.device(shop["spare_token"])
    r = replace(api, old.id, third.id)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "already_replaced")
    other = api.device(shop["spare_token"])
    r = replace(api, other.id, new.id)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "already_replacing")
    assert device(api, other.id)["state"] == "enrolled"


def test_replacement_across_sites_moves_the_new_device(api: Api, shop: dict[str, Any]) -> None:
    old = shop["old"]
    api.site("depot")
    spare = api.device(api.token(site="depot")["token"])
    r = replace(api, old.id, spare.id, across_sites=True, reason="from the depot")
    assert r.status_code == 200, r.text
    assert r.json()["site"] == "shop-1"
    listed = api.ok("GET", "/devices?site=depot", api.admin)
    assert listed == []
    # Both sites' repositories changed: the device left the depot's.
    assert set(r.json()["gitops"]["commits"]) == {"shop-1", "depot"}


def test_names_are_unique_per_site_and_searchable(api: Api, shop: dict[str, Any]) -> None:
    old, new = shop["old"], shop["new"]
    taken = api.call("POST", f"/devices/{new.id}/rename", api.admin, json={"name": "TILL-3"})
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "name_taken")
    bad = api.call("POST", f"/devices/{new.id}/rename", api.admin, json={"name": "a\nb"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_name")
    long = api.call("POST", f"/devices/{new.id}/rename", api.admin, json={"name": "x" * 129})
    assert long.status_code == 422
    assert device(api, new.id)["name"] is None
    api.site("shop-2")
    other = api.device(api.token(site="shop-2")["token"], serial="SN-OTHER")
    api.ok("POST", f"/devices/{other.id}/rename", api.admin, json={"name": "till-3"})
    renamed = api.ok("POST", f"/devices/{new.id}/rename", api.admin, json={"name": " spare "})
    assert renamed["name"] == "spare"
    (rec,) = [a for a in audit(api, "device.rename") if a["target"] == new.id]
    assert rec["detail"] == {"name": "spare", "previous": None}

    def search(q: str, **params: Any) -> list[str]:
        r = api.call("GET", "/devices", api.admin, params={"q": q, **params})
        assert r.status_code == 200, r.text
        return [d["id"] for d in r.json()]

    assert search("till-3") == [old.id, other.id]
    assert search("TILL") == [old.id, other.id]
    assert search("till-3", site="shop-2") == [other.id]
    assert search("sn-new") == [new.id]
    assert search("spare.shop1") == [new.id]  # hostname
    assert search(old.id[:9]) == [old.id]  # id prefix
    assert search(old.id[4:10]) == [old.id]  # without dev-
    assert search("%") == [] and search("_") == []  # wildcards are literal
    assert search("till", label="zone=front") == [old.id]
    # A page and the total the filters match.
    r = api.call("GET", "/devices", api.admin, params={"q": "till", "limit": 1, "offset": 1})
    assert [d["id"] for d in r.json()] == [other.id] and r.headers["x-total-count"] == "2"
    listed = api.ok("GET", "/devices", api.admin)
    assert [d["name"] for d in listed] == ["till-3", "spare", "till-3"]
    # A decommissioned device keeps its name, and frees it at its site.
    api.ok("POST", f"/devices/{old.id}/decommission", api.admin)
    again = api.call("POST", f"/devices/{old.id}/rename", api.admin, json={"name": "x"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "invalid_transition")
    assert device(api, old.id)["name"] == "till-3"
    api.ok("POST", f"/devices/{new.id}/rename", api.admin, json={"name": "till-3"})
    cleared = api.ok("POST", f"/devices/{new.id}/rename", api.admin, json={"name": None})
    assert cleared["name"] is None
    bad_state = api.call("GET", "/devices", api.admin, params={"state": "nope"})
    assert bad_state.status_code == 400


def test_replacement_token_replaces_as_the_device_enrols(api: Api, shop: dict[str, Any]) -> None:
    old = shop["old"]
    operator = api.user("ops", "operator")
    refusals = [
        ({"site": "shop-1", "replaces": old.id, "max_uses": 2}, 400, "bad_uses"),
        ({"replaces": old.id, "profile": "vision"}, 400, "bad_profile"),
        ({"site": "nowhere", "replaces": old.id}, 400, "other_site"),
        ({"replaces": "dev-nope"}, 404, "unknown_device"),
    ]
    tokens_before = len(api.ok("GET", "/tokens", api.admin))
    for body, status, code in refusals:
        r = api.call("POST", "/tokens", operator, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert len(api.ok("GET", "/tokens", api.admin)) == tokens_before
    made = api.ok("POST", "/tokens", operator, json={"replaces": old.id, "labels": {"hw": "pi5"}})
    assert (made["site"], made["max_uses"], made["replaces"]) == ("shop-1", 1, old.id)
    new = api.device(made["token"], serial="SN-REPL")
    assert new.response["profile"] == "vision"
    got = device(api, new.id)
    assert got["name"] == "till-3" and got["replaces"] == old.id
    assert got["labels"] == {"zone": "front", "batch": "2021", "hw": "pi5"}
    assert (got["profile"], got["profile_revision"]) == ("vision", 1)
    assert desired(api, new)["revision"] == 1
    assert device(api, old.id)["state"] == "decommissioned"
    refused = api.call("GET", f"/devices/{old.id}/desired", old.access_token)
    assert refused.status_code == 403
    (rec,) = audit(api, "device.replace")
    assert rec["actor"] == "ops" and rec["detail"]["via"] == f"token {made['kid']}"
    commit = wait_commit(api, "shop-1", f"Replace {old.id} with {new.id}")
    assert f"via token {made['kid']}" in commit["body"]
    # One use; and a replaced device takes no further replacement token.
    again = api.enrol(made["token"])
    assert again.status_code == 410
    r = api.call("POST", "/tokens", api.admin, json={"replaces": old.id})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "not_replaceable")


def test_replacement_token_for_a_device_decommissioned_since_enrols_nothing(
    api: Api, shop: dict[str, Any]
) -> None:
    old = shop["old"]
    made = api.token(site=None, replaces=old.id)
    api.ok("POST", f"/devices/{old.id}/decommission", api.admin)
    count = len(api.ok("GET", "/devices", api.admin))
    r = api.enrol(made["token"])
    assert r.status_code == 410 and "no longer serving" in r.json()["error"]["message"]
    assert len(api.ok("GET", "/devices", api.admin)) == count
    assert (
        next(t for t in api.ok("GET", "/tokens", api.admin) if t["kid"] == made["kid"])["uses"] == 0
    )


def test_approval_required_replacement_token_replaces_at_approval(
    api: Api, shop: dict[str, Any]
) -> None:
    old = shop["old"]
    installer = api.user("inst", "installer", site="shop-1")
    made = api.token(site=None, replaces=old.id, require_approval=True)
    r = api.enrol(made["token"], serial="SN-WAIT")
    assert r.status_code == 202, r.text
    waiting = r.json()["device_id"]
    # Until approved, nothing moved: the old device still serves.
    assert device(api, old.id)["state"] == "enrolled"
    assert desired(api, old)["revision"] == 1
    out = api.ok("POST", f"/devices/{waiting}/approve", installer)
    assert out["name"] == "till-3" and out["replaces"] == old.id
    assert out["labels"]["zone"] == "front" and out["profile"] == "vision"
    assert device(api, old.id)["replaced_by"] == waiting
    assert api.call("GET", f"/devices/{old.id}/desired", old.access_token).status_code == 403
    commit = wait_commit(api, "shop-1", f"Replace {old.id} with {waiting}")
    assert "approved by inst" in commit["body"]


def test_approval_of_a_replacement_whose_old_device_is_gone_is_refused(
    api: Api, shop: dict[str, Any]
) -> None:
    old = shop["old"]
    made = api.token(site=None, replaces=old.id, require_approval=True)
    waiting = api.enrol(made["token"]).json()["device_id"]
    api.ok("POST", f"/devices/{old.id}/decommission", api.admin)
    r = api.call("POST", f"/devices/{waiting}/approve", api.admin)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "not_replaceable")
    assert device(api, waiting)["state"] == "awaiting_approval"
    assert api.ok("POST", f"/devices/{waiting}/reject", api.admin)["state"] == "rejected"


def test_replacing_a_device_a_rollout_moved_gives_the_safe_revision(api: Api) -> None:
    """The canary of a running rollout is replaced: its replacement gets the released
    revision (it is in no wave, so a rollback could not move it back), the canary's place
    is resolved "replaced", and the rollout goes on and completes; the replacement then
    follows the released target like every follower."""
    api.site("shop-1")
    api.profile("vision", {**HOURLY, "config": {"v": 1}})
    token = api.token(site="shop-1", profile="vision")["token"]
    fleet = [api.device(token) for _ in range(3)]
    for dev in fleet:
        api.ok("POST", f"/devices/{dev.id}/status", dev.access_token, json={"applied_revision": 1})
    body = {"name": "vision", "spec": {**HOURLY, "config": {"v": 2}}, "hold": True}
    api.ok("POST", "/profiles", api.admin, json=body)
    spec = {"profile": "vision", "bake_seconds": 0, "seed": "s", "waves": "1,100%"}
    rid = api.ok("POST", "/rollouts", api.admin, json=spec)["id"]
    deadline = time.monotonic() + 20
    while not (moved := [d for d in fleet if desired(api, d)["revision"] == 2]):
        assert time.monotonic() < deadline, "the canary was never moved"
        time.sleep(0.05)
    (canary,) = moved
    spare = api.device(api.token(site="shop-1")["token"])
    out = replace(api, canary.id, spare.id, reason="dead during the canary")
    assert out.status_code == 200, out.text
    assert (out.json()["profile"], out.json()["profile_revision"]) == ("vision", None)
    assert desired(api, spare)["revision"] == 1
    places = api.ok("GET", f"/rollouts/{rid}/devices", api.admin)
    place = next(p for p in places if p["device"] == canary.id)
    assert place["state"] == "skipped" and place["reason"] == f"replaced by {spare.id}"
    # The engine goes on: the rest move, report, and the rollout completes.
    rest = [d for d in fleet if d is not canary]
    deadline = time.monotonic() + 20
    while {desired(api, d)["revision"] for d in rest} != {2}:
        assert time.monotonic() < deadline, api.ok("GET", f"/rollouts/{rid}", api.admin)
        time.sleep(0.05)
    for dev in rest:
        api.ok("POST", f"/devices/{dev.id}/status", dev.access_token, json={"applied_revision": 2})
    while (state := api.ok("GET", f"/rollouts/{rid}", api.admin)["state"]) != "completed":
        assert time.monotonic() < deadline + 20, state
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while desired(api, spare)["revision"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    hist = api.ok("GET", f"/devices/{spare.id}/history", api.admin)
    assert [(p["device"], p["outcome"]) for p in hist["rollouts"]] == [(canary.id, "skipped")]


def test_a_retried_replacement_enrolment_is_the_same_device(api: Api, shop: dict[str, Any]) -> None:
    """A lost answer: the agent sends the same key again and gets the same device; the
    token's one use was spent once and nothing is replaced twice."""
    old = shop["old"]
    made = api.token(site=None, replaces=old.id)
    key = new_key()
    first = api.enrol(made["token"], key, serial="SN-R")
    again = api.enrol(made["token"], key, serial="SN-R")
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["device_id"] == again.json()["device_id"]
    assert len(audit(api, "device.replace")) == 1


def test_same_hardware_with_a_replacement_token_replaces_instead_of_rekeying(
    api: Api, shop: dict[str, Any]
) -> None:
    """The old device's own hardware, reflashed (new key, same hardware id): with a plain
    token its new key would wait on the old device for approval; the replacement token
    says what the operator wants, a new device in its place."""
    api.site("shop-9")
    hw_token = api.token(site="shop-9")["token"]
    old = api.device(hw_token, hardware_id="HW-1")
    made = api.token(site=None, replaces=old.id)
    r = api.enrol(made["token"], hardware_id="HW-1")
    assert r.status_code == 200, r.text
    assert device(api, r.json()["device_id"])["replaces"] == old.id
    assert device(api, old.id)["state"] == "decommissioned"


def test_two_replacements_of_one_device_at_once_one_wins(api: Api, shop: dict[str, Any]) -> None:
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    old = shop["old"]
    spares = [shop["new"].id, api.device(shop["spare_token"]).id]
    who = Operator("admin", Role.admin)

    def attempt(new: str) -> str:
        try:
            replacement.replace(rt, who, old.id, new, "race")
            return "won"
        except Conflict as exc:
            return exc.code

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(attempt, spares))
    assert outcomes == ["already_replaced", "won"]
    winner = device(api, old.id)["replaced_by"]
    loser = next(s for s in spares if s != winner)
    assert device(api, loser)["replaces"] is None and device(api, loser)["name"] is None
