"""The operator's rollout commands against the real app in process (SQLite and
PostgreSQL), its engine thread driving: create shows the plan and asks, list and status
show where rollouts stand, the actions change the state and record why, ``--watch`` ends
with the rollout; and ``profiles apply --hold`` / ``profiles release``."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from edgefleet.cli.rollout_view import status_view
from edgefleet.controller.settings import Settings, load_settings
from tests.support import apiclient
from tests.support.apiclient import Api

runner = CliRunner()
HOURLY = {"policies": {"interval_seconds": 3600}}
"""Devices report hourly: one that reported during the test is online for three hours."""
ENGINE_SECONDS = 30.0
"""Time enough for the engine thread to take a rollout's next steps."""


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """The suite's settings, with the engine's timer short: bakes of 0 s end at once."""
    return load_settings(
        data_dir=tmp_path / "controller",
        database_url=database_url,
        device_interval_seconds=1,
        last_seen_flush_seconds=0.2,
        gitops_debounce_seconds=0.2,
        rollout_tick_seconds=0.2,
    )


def cli(api: Api, *args: str, input: str | None = None) -> Any:
    g = Globals("https://testserver", api.admin, None)
    g.transport = api.client._transport  # the real app, in process
    return runner.invoke(app, list(args), obj=g, input=input, catch_exceptions=False)


def fleet(api: Api, n: int = 3, *, on_target: bool = True) -> list[apiclient.TestDevice]:
    """Profile ``vision``: ``n`` online devices follow revision 1, then revision 2 is
    applied held back. With ``on_target`` the devices already report running revision 2,
    so each one succeeds as soon as a wave moves it."""
    api.site("shop-1")
    api.profile("vision", {"description": "one", **HOURLY})
    reg = api.token(site="shop-1", profile="vision")["token"]
    devices = [api.device(reg) for _ in range(n)]
    two = {"name": "vision", "spec": {"description": "two", **HOURLY}, "hold": True}
    api.ok("POST", "/profiles", api.admin, json=two)
    for dev in devices:
        report = {"applied_revision": 2 if on_target else 1}
        api.ok("POST", f"/devices/{dev.id}/status", dev.access_token, json=report)
    return devices


def create(api: Api, *options: str) -> dict[str, Any]:
    out = cli(api, "rollouts", "create", "--profile", "vision", "-y", "-o", "json", *options)
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def rollout(api: Api, rollout_id: int) -> dict[str, Any]:
    return api.ok("GET", f"/rollouts/{rollout_id}", api.admin)  # type: ignore[no-any-return]


def wait_for(api: Api, rollout_id: int, *states: str) -> dict[str, Any]:
    deadline = time.monotonic() + ENGINE_SECONDS
    while (found := rollout(api, rollout_id))["state"] not in states:
        assert time.monotonic() < deadline, f"still {found['state']}: {found['events']}"
        time.sleep(0.1)
    return found


def events(found: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["actor"], e["action"], e["reason"]) for e in found["events"]]


# -- create ---------------------------------------------------------------------------


def test_create_shows_the_plan_and_creates_nothing_when_refused(api: Api) -> None:
    fleet(api)
    out = cli(api, "rollouts", "create", "--profile", "vision", input="n\n")
    assert out.exit_code == 1
    assert "closed now / opens at" in out.output and "Create this rollout?" in out.output
    assert "nothing created" in out.output
    assert api.ok("GET", "/rollouts", api.admin) == []


def test_create_confirmed_runs_exactly_the_waves_shown(api: Api) -> None:
    fleet(api, 5)
    options = ["--waves", "1,50%,100%", "--bake", "1h", "--reason", "new-detector"]
    out = cli(api, "rollouts", "create", "--profile", "vision", *options, input="y\n")
    assert out.exit_code == 0, out.output
    seed = re.search(r"seed (\S+): the same options", out.output)
    created = re.search(r"rollout (\d+) created: profile vision revision 1 -> 2", out.output)
    assert seed and created, out.output
    assert f"edgefleet rollouts status {created[1]} --watch" in out.output

    found = rollout(api, int(created[1]))
    assert found["spec"]["seed"] == seed[1] and found["spec"]["bake_seconds"] == 3600
    shown = api.ok("POST", "/rollouts/plan", api.admin, json=found["spec"])
    assert [w["devices"] for w in found["waves"]] == [w["devices"] for w in shown["waves"]]
    assert events(found)[0] == ("admin", "created", "new-detector")


def test_create_with_yes_takes_the_timeout_and_one_rollout_per_profile(api: Api) -> None:
    fleet(api)
    first = create(api, "--update-timeout", "10m", "--bake", "1h")
    assert first["spec"]["update_timeout_seconds"] == 600 and first["state"] == "running"
    again = cli(api, "rollouts", "create", "--profile", "vision", "-y")
    assert again.exit_code == 1 and "rollout_active" in again.output
    bad = cli(api, "rollouts", "create", "--profile", "vision", "--update-timeout", "later")
    assert bad.exit_code == 2 and "not a duration" in bad.output


# -- list and status ------------------------------------------------------------------


def test_list_shows_each_rollout_and_filters_by_state(api: Api) -> None:
    fleet(api, 4)
    made = create(api, "--waves", "1,100%", "--bake", "1h")
    table = cli(api, "rollouts", "list")
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "admin" in line)
    for cell in ("vision", "1 -> 2", "running", "/2", "/4", "admin"):
        assert cell in row, table.output
    listed = json.loads(cli(api, "rollouts", "list", "-o", "json").output)
    assert [r["id"] for r in listed] == [made["id"]]
    done = json.loads(cli(api, "rollouts", "list", "--state", "completed", "-o", "json").output)
    assert done == []
    typo = cli(api, "rollouts", "list", "--state", "done")
    assert typo.exit_code == 2 and "running" in typo.output


def test_status_shows_the_waves_their_bake_and_the_events(api: Api) -> None:
    fleet(api, 4)
    made = create(api, "--waves", "1,100%", "--bake", "1h", "--reason", "canary-first")
    wait_for_wave = time.monotonic() + ENGINE_SECONDS
    while rollout(api, made["id"])["waves"][0]["state"] != "baking":
        assert time.monotonic() < wait_for_wave, rollout(api, made["id"])
        time.sleep(0.1)
    out = cli(api, "rollouts", "status", str(made["id"]))
    assert out.exit_code == 0, out.output
    assert f"rollout {made['id']}: profile vision, revision 1 -> 2, running" in out.output
    assert "bake, 59m left" in out.output or "bake, 1h left" in out.output
    assert "1 ok" in out.output and "3 pending" in out.output
    assert "created" in out.output and "canary-first" in out.output
    data = json.loads(cli(api, "rollouts", "status", str(made["id"]), "-o", "json").output)
    assert [w["state"] for w in data["waves"]] == ["baking", "pending"]


def test_an_unknown_rollout_is_a_clear_error(api: Api) -> None:
    for args in (["status", "42"], ["pause", "42"], ["status", "42", "--watch"]):
        out = cli(api, "rollouts", *args)
        assert out.exit_code == 1 and "no_rollout" in out.output, out.output
    assert cli(api, "rollouts", "status", "first").exit_code == 2


# -- the operator's actions -----------------------------------------------------------


def test_pause_resume_and_abort_change_the_state_and_record_why(api: Api) -> None:
    fleet(api)
    made = create(api, "--bake", "1h")
    rid = str(made["id"])
    out = cli(api, "rollouts", "pause", rid, "--reason", "alarm-in-shop-1")
    assert out.exit_code == 0 and f"rollout {rid} is paused: alarm-in-shop-1" in out.output
    assert "alarm-in-shop-1" in cli(api, "rollouts", "status", rid).output
    again = cli(api, "rollouts", "pause", rid)
    assert again.exit_code == 1 and "bad_state" in again.output

    out = cli(api, "rollouts", "resume", rid, "--reason", "false-alarm")
    assert out.exit_code == 0 and "is running" in out.output
    out = cli(api, "rollouts", "abort", rid, "--reason", "wrong-model", "-o", "json")
    assert json.loads(out.output)["state"] == "aborted"

    found = rollout(api, made["id"])
    operator = [e for e in events(found) if e[0] == "admin"]
    assert operator[1:] == [
        ("admin", "paused", "alarm-in-shop-1"),
        ("admin", "resumed", "false-alarm"),
        ("admin", "aborted", "wrong-model"),
    ]
    assert cli(api, "rollouts", "resume", rid).exit_code == 1


@pytest.mark.timeout(120)
def test_rollback_ends_the_rollout_and_watch_says_so_with_exit_1(api: Api) -> None:
    fleet(api)
    made = create(api, "--bake", "1h")
    out = cli(api, "rollouts", "rollback", str(made["id"]), "--reason", "bad-model")
    assert out.exit_code == 0 and "is rolled_back: bad-model" in out.output
    assert ("admin", "rolled_back", "bad-model") in events(rollout(api, made["id"]))
    watched = cli(api, "rollouts", "status", str(made["id"]), "--watch")
    assert watched.exit_code == 1
    assert f"rollout {made['id']} ended rolled_back: bad-model" in watched.output


@pytest.mark.timeout(120)
def test_watch_follows_a_rollout_until_it_completes(api: Api) -> None:
    """The engine thread moves devices already on the target: each wave passes at once."""
    fleet(api, 4)
    made = create(api, "--waves", "1,50%,100%", "--bake", "0")
    out = cli(api, "rollouts", "status", str(made["id"]), "--watch", "--interval", "0.1")
    assert out.exit_code == 0, out.output
    assert f"rollout {made['id']} completed" in out.output
    found = rollout(api, made["id"])
    assert found["state"] == "completed" and found["counts"]["succeeded"] == 4
    assert [w["state"] for w in found["waves"]] == ["passed"] * 3
    listed = json.loads(cli(api, "profiles", "list", "-o", "json").output)
    assert listed[0]["released_revision"] == 2  # released to every follower
    shown = cli(api, "rollouts", "devices", str(made["id"]), "--wave", "2", "-o", "json")
    assert [(d["wave"], d["state"]) for d in json.loads(shown.output)] == [(2, "succeeded")]
    table = cli(api, "rollouts", "devices", str(made["id"]), "--state", "succeeded")
    assert table.exit_code == 0 and table.output.count("succeeded") == 4


@pytest.mark.timeout(120)
def test_watch_with_json_waits_and_prints_the_final_rollout(api: Api) -> None:
    fleet(api, 2)
    made = create(api, "--waves", "100%", "--bake", "0")
    out = cli(api, "rollouts", "status", str(made["id"]), "-w", "--interval", "0.1", "-o", "json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["state"] == "completed"


# -- holding a revision back, and releasing it ----------------------------------------


def test_apply_hold_keeps_followers_and_release_gives_them_a_revision(
    api: Api, tmp_path: Path
) -> None:
    doc = tmp_path / "vision.yaml"
    doc.write_text("name: vision\ndescription: one\n")
    assert cli(api, "profiles", "apply", str(doc)).exit_code == 0
    doc.write_text("name: vision\ndescription: two\n")
    held = json.loads(cli(api, "profiles", "apply", str(doc), "--hold", "-o", "json").output)
    assert (held["revision"], held["released_revision"]) == (2, 1)
    table = cli(api, "profiles", "list").output
    assert "released_revision" in table and re.search(r"vision\W+2\W+1\W", table), table
    assert "followers get revision 1" in cli(api, "profiles", "show", "vision").output

    neither = cli(api, "profiles", "release", "vision")
    both = cli(api, "profiles", "release", "vision", "--revision", "1", "--latest")
    for out in (neither, both):
        assert out.exit_code == 1 and "one of --revision N and --latest" in out.output
    out = cli(api, "profiles", "release", "vision", "--latest", "--reason", "ok", "-o", "json")
    assert json.loads(out.output)["released_revision"] is None
    out = cli(api, "profiles", "release", "vision", "--revision", "1", "-o", "json")
    assert json.loads(out.output)["released_revision"] == 1
    missing = cli(api, "profiles", "release", "vision", "--revision", "9")
    assert missing.exit_code == 1


def test_release_is_refused_while_a_rollout_moves_the_followers(api: Api) -> None:
    fleet(api)
    create(api, "--bake", "1h")
    out = cli(api, "profiles", "release", "vision", "--latest")
    assert out.exit_code == 1 and "rollout_active" in out.output


# -- the status view, wave by wave ----------------------------------------------------


def test_the_status_view_shows_what_each_wave_waits_for_and_its_gate() -> None:
    """States the engine takes time to reach: drawn from a document as the API gives it."""
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def ago(minutes: int) -> str:
        return (now - timedelta(minutes=minutes)).isoformat()

    def counts(**n: int) -> dict[str, int]:
        keys = ("pending", "updating", "succeeded", "failed", "skipped", "reverted")
        return {k: n.get(k, 0) for k in keys}

    def wave(number: int, state: str, **kw: Any) -> dict[str, Any]:
        base = {"number": number, "step": "x", "state": state, "devices": 10}
        base.update(bake_until=None, waiting_for_window=[], gate=None, counts=counts())
        return {**base, **kw}

    doc = {
        "id": 7,
        "profile": "vision",
        "revision": 3,
        "from_revision": 2,
        "state": "paused",
        "reason": "gate failed: 2 of 10 updates failed",
        "current_wave": 3,
        "waves_total": 3,
        "devices": 30,
        "counts": counts(succeeded=17, failed=2, updating=1, pending=10),
        "created_by": "alice",
        "created_at": ago(90),
        "finished_at": None,
        "waves": [
            wave(1, "baking", bake_until=ago(-25), counts=counts(succeeded=10)),
            wave(2, "updating", waiting_for_window=["shop-9"], counts=counts(updating=1)),
            wave(
                3,
                "failed",
                gate={"ok": False, "detail": "2 of 10 updates failed"},
                counts=counts(succeeded=7, failed=2, pending=1),
            ),
        ],
        "events": [
            {"at": ago(80 - i), "actor": "edgefleet", "action": "wave_started", "reason": ""}
            for i in range(8)
        ],
    }
    console = Console(width=160, record=True)
    console.print(status_view(doc, now))
    text = console.export_text()
    assert "revision 2 -> 3, paused (wave 3/3): gate failed: 2 of 10 updates failed" in text
    assert "30 devices: 17 ok, 2 failed, 1 updating, 10 pending" in text
    assert "bake, 25m left" in text and "window at shop-9" in text
    assert "failed: 2 of 10 updates failed" in text and "7 ok, 2 failed, 1 pending" in text
    assert "2 earlier events" in text
