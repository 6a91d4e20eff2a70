"""Rollout dry runs and site maintenance windows, through the real app on SQLite and
PostgreSQL: waves and their offline devices, windows closed now and when they open, the
expected duration, errors an operator can act on, and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.rollouts.members import select_members
from edgefleet.controller.rollouts.plan import assign, parse_steps
from edgefleet.controller.rollouts.spec import RolloutSpec
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import rollouts
from edgefleet.controller.services.rollouts import UPDATE_SECONDS_ESTIMATE
from tests.support.apiclient import Api

runner = CliRunner()
HOURLY = {"policies": {"interval_seconds": 3600}}
"""Devices report hourly: one that reported during the test is online for three hours."""
ALWAYS = "daily 00:00-24:00"


def cli(api: Api, *args: str) -> Any:
    g = Globals("https://testserver", api.admin, None)
    g.transport = api.client._transport  # the real app, in process
    return runner.invoke(app, list(args), obj=g, catch_exceptions=False)


def runtime(api: Api) -> Runtime:
    return api.client.app.state.rt  # type: ignore[attr-defined,no-any-return]


def enrol(api: Api, n: int, site: str, *, online: int = 0, **token: Any) -> list[str]:
    """``n`` devices of profile ``vision`` at ``site``; the first ``online`` of them report
    their status (so the controller has heard from them), the others never do."""
    reg = api.token(site=site, profile="vision", **token)["token"]
    ids = []
    for i in range(n):
        dev = api.device(reg)
        if i < online:
            api.ok("POST", f"/devices/{dev.id}/status", dev.access_token, json={})
        ids.append(dev.id)
    return ids


def plan(api: Api, **spec: Any) -> Any:
    return api.call("POST", "/rollouts/plan", api.admin, json=spec)


def error(r: Any, status: int) -> dict[str, str]:
    assert r.status_code == status, r.text
    return r.json()["error"]  # type: ignore[no-any-return]


# -- site maintenance windows -----------------------------------------------------------


def test_sites_keep_their_windows_and_an_operator_changes_them(api: Api) -> None:
    body = {"name": "shop-1", "timezone": "Europe/Paris"}
    windows = ["Mon-Fri  01:00-05:00", "Sat,Sun 00:00-24:00"]
    api.ok("POST", "/sites", api.admin, json={**body, "maintenance_windows": windows})
    api.site("shop-2")
    listed = {s["name"]: s["maintenance_windows"] for s in api.ok("GET", "/sites", api.admin)}
    assert listed == {"shop-1": ["Mon-Fri 01:00-05:00", "Sat,Sun 00:00-24:00"], "shop-2": []}

    path = "/sites/shop-2/maintenance-windows"
    changed = api.ok("PUT", path, api.admin, json={"windows": ["daily 22:00-06:00"]})
    assert changed["maintenance_windows"] == ["daily 22:00-06:00"]
    record = api.ok("GET", "/audit", api.admin)[0]
    assert (record["action"], record["target"], record["actor"]) == (
        "site.windows",
        "shop-2",
        "admin",
    )
    assert record["detail"] == {"before": [], "after": ["daily 22:00-06:00"]}
    cleared = api.ok("PUT", path, api.admin, json={"windows": []})
    assert cleared["maintenance_windows"] == []


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ("weekdays 01:00-05:00", "days are Mon..Sun"),
        ("Mon 22:00-25:00", "times run 00:00 to 24:00"),
        ("at night", "must read DAYS HH:MM-HH:MM"),
    ],
)
def test_a_bad_window_is_refused_with_the_reason_and_nothing_is_stored(
    api: Api, window: str, reason: str
) -> None:
    body = {"name": "shop-1", "maintenance_windows": ["Sat 00:00-06:00", window]}
    err = error(api.call("POST", "/sites", api.admin, json=body), 400)
    assert err["code"] == "bad_window" and reason in err["message"] and window in err["message"]
    assert api.ok("GET", "/sites", api.admin) == []

    api.ok("POST", "/sites", api.admin, json={"name": "shop-2", "maintenance_windows": [ALWAYS]})
    path = "/sites/shop-2/maintenance-windows"
    err = error(api.call("PUT", path, api.admin, json={"windows": [window]}), 400)
    assert reason in err["message"]
    assert api.ok("GET", "/sites", api.admin)[0]["maintenance_windows"] == [ALWAYS]
    assert not any(a["action"] == "site.windows" for a in api.ok("GET", "/audit", api.admin))


def test_windows_of_an_unknown_site_are_a_404(api: Api) -> None:
    r = api.call("PUT", "/sites/nowhere/maintenance-windows", api.admin, json={"windows": []})
    assert "no site 'nowhere'" in error(r, 404)["message"]


def test_the_cli_sets_lists_and_clears_windows(api: Api) -> None:
    weekdays, weekend = ("--window", "Mon-Fri 01:00-05:00"), ("--window", "Sat,Sun 00:00-24:00")
    out = cli(api, "sites", "create", "shop-1", *weekdays, *weekend)
    assert out.exit_code == 0, out.output
    listed = cli(api, "sites", "list")
    assert "Mon-Fri" in listed.output and "Sat,Sun" in listed.output
    out = cli(api, "sites", "windows", "shop-1", "--window", "daily 23:00-01:00", "-o", "json")
    assert json.loads(out.output)["maintenance_windows"] == ["daily 23:00-01:00"]
    assert cli(api, "sites", "windows", "shop-1", "--clear").exit_code == 0
    shown = json.loads(cli(api, "sites", "list", "-o", "json").output)
    assert shown[0]["maintenance_windows"] == []
    assert "any time" in cli(api, "sites", "list").output

    neither = cli(api, "sites", "windows", "shop-1")
    assert neither.exit_code == 1 and "--clear" in neither.output
    bad = cli(api, "sites", "windows", "shop-1", "--window", "Mon 9-5")
    assert bad.exit_code == 1 and "must read DAYS HH:MM-HH:MM" in bad.output


# -- the dry run ------------------------------------------------------------------------


def test_a_plan_shows_waves_offline_devices_and_the_revisions(api: Api) -> None:
    api.site("shop-1")
    api.site("shop-2")
    api.profile("vision", {"config": {"v": 1}, **HOURLY})
    enrol(api, 12, "shop-1", online=9)
    enrol(api, 8, "shop-2", online=5)
    enrol(api, 3, "shop-2", online=3, labels={"tier": "silver"})
    api.profile("vision", {"config": {"v": 2}, **HOURLY})

    viewer = api.user("vera", "viewer")
    spec = {"profile": "vision", "waves": "1,25%,100%", "seed": "s1"}
    answer = api.ok("POST", "/rollouts/plan", viewer, json=spec)
    assert (answer["profile"], answer["revision"], answer["latest_revision"]) == ("vision", 2, 2)
    assert answer["from_revision"] == 2 and answer["following"] == {"2": 23}
    assert (answer["devices"], answer["offline"], answer["sites"]) == (23, 6, 2)
    waves = answer["waves"]
    assert [(w["wave"], w["step"], w["devices"]) for w in waves] == [
        (1, "1", 1),
        (2, "25%", 5),
        (3, "100%", 17),
    ]
    assert sum(w["offline"] for w in waves) == 6
    assert all(w["sites_closed_now"] == [] and w["opens_at"] is None for w in waves)
    assert answer["seed"] == "s1" and answer["spec"]["seed"] == "s1"
    assert answer["spec"]["revision"] == 2  # what `create` gets, even after a new revision

    # The waves are exactly those the engine's functions make with that seed.
    engine, now = runtime(api).engine, datetime.now(UTC)
    members = select_members(engine, "vision", now=now, interval_seconds=3600)
    expected = assign(members, parse_steps("1,25%,100%"), "s1")
    assert [(w["offline"], w["sites"]) for w in waves] == [
        (w.offline, sorted(w.sites)) for w in expected
    ]
    again = api.ok("POST", "/rollouts/plan", api.admin, json=answer["spec"])
    assert again["waves"] == waves

    silver = {"labels": {"tier": "silver"}, "sites": ["shop-2"]}
    narrowed = plan(api, profile="vision", revision=1, **silver).json()
    assert (narrowed["devices"], narrowed["offline"], narrowed["revision"]) == (3, 0, 1)
    assert "revision 1 is older than the profile's latest (2)" in narrowed["warnings"]
    assert len(narrowed["seed"]) == 16 and narrowed["seed"] != answer["seed"]  # drawn


def test_windows_closed_now_say_when_they_open(api: Api) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    later = now + timedelta(hours=12)  # a one-minute window, half a day away
    end = later + timedelta(minutes=1)
    rarely = f"daily {later:%H:%M}-{'24:00' if end.hour == end.minute == 0 else f'{end:%H:%M}'}"
    api.ok("POST", "/sites", api.admin, json={"name": "open", "maintenance_windows": [ALWAYS]})
    api.ok("POST", "/sites", api.admin, json={"name": "shut", "maintenance_windows": [rarely]})
    api.profile("vision", HOURLY)
    enrol(api, 2, "open", online=2)
    enrol(api, 2, "shut", online=1)

    answer = plan(api, profile="vision", waves="100%", bake_seconds=0, seed="w").json()
    [wave] = answer["waves"]
    assert wave["sites"] == ["open", "shut"] and wave["offline"] == 1
    assert wave["sites_closed_now"] == ["shut"]
    assert datetime.fromisoformat(wave["opens_at"]) == later
    # Half a day's wait, then one batch of updates (no concurrency cap, no bake).
    assert 12 * 3600 - 120 < answer["expected_seconds"] - UPDATE_SECONDS_ESTIMATE <= 12 * 3600

    table = cli(api, "rollouts", "plan", "--profile", "vision", "--waves", "100%").output
    assert "shut" in table and "UTC" in table and "follow revision 1 now" in table

    ignored = plan(api, profile="vision", waves="100%", bake_seconds=0, respect_windows=False)
    [wave] = ignored.json()["waves"]
    assert wave["sites_closed_now"] == [] and wave["opens_at"] is None
    assert ignored.json()["expected_seconds"] == UPDATE_SECONDS_ESTIMATE


def test_the_expected_duration_adds_window_waits_batches_and_bake(api: Api) -> None:
    """At a fixed time, through the service: the sum in rollouts' docstring, wave by wave."""
    api.site("day")
    nights = ["daily 22:00-23:00"]
    paris = {"name": "night", "timezone": "Europe/Paris", "maintenance_windows": nights}
    api.ok("POST", "/sites", api.admin, json=paris)
    api.profile("vision", HOURLY)
    enrol(api, 2, "day", online=2, labels={"ring": "canary"})
    enrol(api, 3, "night", online=2)
    tuesday_noon_paris = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    admin = Operator("admin", Role.admin)

    def dry_run(**kw: Any) -> dict[str, Any]:
        spec = RolloutSpec(profile="vision", waves="ring=canary,100%", bake_seconds=60, **kw)
        return rollouts.plan(runtime(api), admin, spec, tuesday_noon_paris)

    answer = dry_run(concurrency=2)
    canary, rest = answer["waves"]
    assert (canary["devices"], canary["sites"], canary["sites_closed_now"]) == (2, ["day"], [])
    assert canary["expected_seconds"] == 1 * UPDATE_SECONDS_ESTIMATE + 60
    assert (rest["devices"], rest["sites_closed_now"]) == (3, ["night"])
    assert rest["opens_at"] == "2026-11-24T21:00:00+00:00"  # 22:00 in Paris
    # The canary wave ends at 11:06 UTC; the rest waits for 21:00, then updates 2 + 1.
    wait = (21 * 3600) - (11 * 3600 + UPDATE_SECONDS_ESTIMATE + 60)
    assert rest["expected_seconds"] == wait + 2 * UPDATE_SECONDS_ESTIMATE + 60
    assert answer["expected_seconds"] == canary["expected_seconds"] + rest["expected_seconds"]
    assert answer["offline_wait_seconds"] == 3600  # one wave has an offline device

    skipping = dry_run(concurrency=2, offline="skip", respect_windows=False)
    assert skipping["waves"][1]["expected_seconds"] == UPDATE_SECONDS_ESTIMATE + 60  # 2 online
    assert skipping["offline_wait_seconds"] == 0
    failing = dry_run(offline="fail")
    assert any("offline=fail" in w for w in failing["warnings"])


@pytest.mark.parametrize(
    ("spec", "status", "code", "words"),
    [
        ({"profile": "nope"}, 404, "no_profile", "no profile 'nope'"),
        ({"profile": "vision", "revision": 7}, 404, "no_revision", "revisions 1 to 1"),
        ({"profile": "vision", "sites": ["shop-1", "mars"]}, 404, "no_site", "'mars'"),
        ({"profile": "vision", "waves": "1,50%"}, 400, "bad_plan", "must be 100%"),
        ({"profile": "vision", "labels": {"tier": "gold"}}, 400, "no_devices", "tier=gold"),
        ({"profile": "vision", "bake": 5}, 422, "invalid_request", "bake"),
        ({"profile": "vision", "gates": {"min_success_ratio": 2}}, 422, "invalid_request", ""),
        ({"profile": "vision", "offline": "later"}, 422, "invalid_request", "offline"),
    ],
)
def test_a_plan_that_cannot_be_made_says_why(
    api: Api, spec: dict[str, Any], status: int, code: str, words: str
) -> None:
    api.site("shop-1")
    api.profile("vision", HOURLY)
    enrol(api, 1, "shop-1")
    err = error(plan(api, **spec), status)
    assert err["code"] == code and words in err["message"], err


def test_the_cli_prints_the_waves_and_the_seed(api: Api) -> None:
    api.site("shop-1")
    api.profile("vision", HOURLY)
    enrol(api, 4, "shop-1", online=3)
    options = ["--waves", "1,50%,100%", "--bake", "5m", "--concurrency", "2", "--seed", "abc"]
    out = cli(api, "rollouts", "plan", "--profile", "vision", *options)
    assert out.exit_code == 0, out.output
    assert "closed now / opens at" in out.output and "shop-1" in out.output
    assert "4 devices at 1 site(s), 1 offline" in out.output
    assert "seed abc" in out.output
    # Per wave: 1 batch + 5m bake; 1 device, then 1, then 2 (one batch of 2): 3 x 10m.
    assert "expected duration 30m" in out.output

    options = ["--seed", "abc", "--offline-deadline", "2h", "-o", "json"]
    data = json.loads(cli(api, "rollouts", "plan", "--profile", "vision", *options).output)
    assert data["spec"]["offline_deadline_seconds"] == 7200 and data["seed"] == "abc"
    assert [w["devices"] for w in data["waves"]] == [1, 0, 3]
    assert any("wave 2 (10%) has no devices" in w for w in data["warnings"])

    missing = cli(api, "rollouts", "plan", "--profile", "vision", "--site", "mars")
    assert missing.exit_code == 1 and "no site 'mars'" in missing.output
    bad = cli(api, "rollouts", "plan", "--profile", "vision", "--bake", "soon")
    assert bad.exit_code == 2 and "not a duration" in bad.output
