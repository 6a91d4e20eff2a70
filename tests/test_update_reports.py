"""Update reports: a device uploads how an update ended with its rollback evidence, once
however often it resends; evidence is bounded; operators read it over the API and CLI;
the device's slots and last outcome show on the device."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from edgefleet.wire import MAX_EVIDENCE_BYTES
from tests.support.apiclient import Api, TestDevice

runner = CliRunner()

STARTED = "2030-03-01T10:00:00+00:00"
EVIDENCE = {
    "failed_checks": [
        {
            "name": "probe",
            "detail": "golden probe differs: scores max error 0.41 > atol 0.01",
            "output": "runner: loaded detector in 212 ms",
        },
        {
            "name": "exec",
            "detail": "/usr/local/bin/camera-selftest exited 3",
            "output": "camera usb0: no frames for 5 s\nselftest: FAILED",
        },
    ],
    "probe": [
        {
            "model": "detector",
            "output": "scores",
            "expected": [0.91, 0.05, 0.04],
            "actual": [0.5, None, 0.1],
            "detail": "max abs error 0.41",
        }
    ],
    "latency": [
        {"model": "detector", "samples_ms": [10.0, 11.0, 12.0, 30.0, 95.0], "budget_ms": 50}
    ],
    "log": ["10:00:01 INFO switching to slot B", "10:00:07 WARNING probe [scores] differs"],
}


def report(revision: int = 4, outcome: str = "rolled_back", **evidence: Any) -> dict[str, Any]:
    return {
        "outcome": {
            "revision": revision,
            "outcome": outcome,
            "slot": "B",
            "reason": "health check probe failed",
            "started_at": STARTED,
            "finished_at": "2030-03-01T10:00:09+00:00",
        },
        "evidence": evidence or EVIDENCE,
    }


def upload(api: Api, dev: TestDevice, body: dict[str, Any]) -> Any:
    return api.call("POST", f"/devices/{dev.id}/updates", dev.access_token, json=body)


def cli(api: Api, *args: str) -> Any:
    g = Globals("https://testserver", api.admin, None)
    g.transport = api.client._transport  # the real app, in process
    return runner.invoke(app, list(args), obj=g, catch_exceptions=False)


def test_a_rollback_report_is_stored_once_however_often_it_is_sent(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    first = upload(api, dev, report())
    assert first.status_code == 200, first.text
    assert first.json()["created"] is True
    again = upload(api, dev, report())  # the answer was lost: the outbox sends it again
    assert again.json() == {"id": first.json()["id"], "created": False}
    # The same instant written in another offset is the same attempt.
    shifted = report()
    shifted["outcome"]["started_at"] = "2030-03-01T12:00:00+02:00"
    assert upload(api, dev, shifted).json() == again.json()
    other = report(revision=5)
    assert upload(api, dev, other).json()["created"] is True

    listed = api.ok("GET", "/updates", api.admin, params={"device": dev.id})
    assert [(u["revision"], u["outcome"]) for u in listed] == [
        (5, "rolled_back"),
        (4, "rolled_back"),
    ]
    assert "evidence" not in listed[0]
    shown = api.ok("GET", f"/updates/{first.json()['id']}", api.admin)
    assert shown["evidence"] == {
        **EVIDENCE,
        "latency": [{**EVIDENCE["latency"][0], "budget_ms": 50.0}],
    }
    assert shown["device"] == dev.id and shown["site"] == "shop-1" and shown["slot"] == "B"
    assert shown["started_at"] == STARTED


def test_oversized_or_malformed_evidence_is_refused_and_nothing_stored(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    over_body_limit = upload(api, dev, report(log=["x" * 1000] * 70))  # ~70 KB body
    assert over_body_limit.status_code == 413, over_body_limit.text
    too_many_lines = upload(api, dev, report(log=["line"] * 501))
    assert too_many_lines.status_code == 422, too_many_lines.text
    assert "log" in too_many_lines.json()["error"]["message"]
    # Under the body limit, yet over what evidence may weigh in total.
    checks = [{"name": f"exec{i}", "output": "y" * 8000} for i in range(7)]
    too_heavy = upload(api, dev, report(failed_checks=checks))
    assert too_heavy.status_code == 422, too_heavy.text
    assert f"at most {MAX_EVIDENCE_BYTES}" in too_heavy.json()["error"]["message"]
    naive = report()
    naive["outcome"]["started_at"] = "2030-03-01T10:00:00"
    assert upload(api, dev, naive).status_code == 422
    assert api.ok("GET", "/updates", api.admin) == []


def test_operators_filter_and_only_readers_see_reports(api: Api) -> None:
    api.site("shop-1")
    api.site("shop-2")
    dev = api.device(api.token(site="shop-1")["token"])
    other = api.device(api.token(site="shop-2")["token"])
    upload(api, dev, report(revision=3, outcome="committed", log=["ok"]))
    upload(api, dev, report(revision=4))
    upload(api, other, report(revision=4, outcome="failed", log=["disk full"]))
    rolled = api.ok("GET", "/updates", api.admin, params={"outcome": "rolled_back"})
    assert [(u["device"], u["revision"]) for u in rolled] == [(dev.id, 4)]
    mine = api.ok("GET", "/updates", api.admin, params={"device": other.id})
    assert [u["outcome"] for u in mine] == ["failed"]
    assert len(api.ok("GET", "/updates", api.admin, params={"limit": 2})) == 2
    bad = api.call("GET", "/updates", api.admin, params={"outcome": "exploded"})
    assert bad.status_code == 400 and "committed" in bad.json()["error"]["message"]
    assert api.call("GET", "/updates/999999", api.admin).status_code == 404

    viewer = api.user("vera", "viewer")
    assert len(api.ok("GET", "/updates", viewer)) == 3
    # Installers approve claims at their site and nothing else (DESIGN.md).
    some_id = mine[0]["id"]
    for installer in (
        api.user("ina", "installer", site="shop-1"),
        api.user("ivo", "installer", site="shop-2"),
    ):
        assert api.call("GET", "/updates", installer).status_code == 403
        assert api.call("GET", f"/updates/{some_id}", installer).status_code == 403
    # A device reports for itself only.
    r = api.call("POST", f"/devices/{dev.id}/updates", other.access_token, json=report())
    assert r.status_code == 403


def test_devices_show_the_slots_and_last_outcome_they_report(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    status = {
        "applied_revision": 3,
        "slots": [
            {"name": "A", "state": "good", "revision": 3},
            {"name": "B", "state": "bad", "revision": 4, "reason": "probe [scores] differs"},
        ],
        "active_slot": "A",
        "last_update": report()["outcome"],
    }
    r = api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=status)
    assert r.status_code == 200, r.text
    shown = api.ok("GET", f"/devices/{dev.id}", api.admin)
    assert shown["active_slot"] == "A"
    assert [(s["name"], s["state"], s["revision"]) for s in shown["slots"]] == [
        ("A", "good", 3),
        ("B", "bad", 4),
    ]
    assert shown["last_update"]["outcome"] == "rolled_back" and shown["last_update"]["slot"] == "B"
    # An older agent that sends none of it still validates, and shows nothing.
    old = api.device(api.token()["token"])
    api.ok("POST", f"/devices/{old.id}/status", old.access_token, json={"applied_revision": 1})
    plain = api.ok("GET", f"/devices/{old.id}", api.admin)
    assert (plain["slots"], plain["active_slot"], plain["last_update"]) == ([], None, None)

    out = cli(api, "devices", "show", dev.id)
    assert out.exit_code == 0, out.output
    assert "active: A" in out.output and "probe [scores] differs" in out.output
    assert "revision 4 in slot B rolled_back" in out.output
    assert f"edgefleet updates list --device {dev.id}" in out.output


def test_cli_lists_and_shows_the_evidence(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    update_id = upload(api, dev, report()).json()["id"]
    upload(api, dev, report(revision=3, outcome="committed", log=["ok"]))

    listed = cli(api, "updates", "list", "--outcome", "rolled_back", "-o", "json")
    assert listed.exit_code == 0, listed.output
    assert [u["id"] for u in json.loads(listed.output)] == [update_id]
    table = cli(api, "updates", "list", "--device", dev.id)
    assert table.exit_code == 0, table.output
    assert {str(update_id), str(update_id + 1)} <= set(table.output.split())

    out = cli(api, "updates", "show", str(update_id))
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert f"update {update_id}: device {dev.id}" in text and "rolled_back" in text
    assert "reason: health check probe failed" in text
    assert "probe: golden probe differs: scores max error 0.41 > atol 0.01" in text
    assert "camera usb0: no frames for 5 s" in text and "selftest: FAILED" in text
    assert "0.91, 0.05, 0.04" in text and "0.5, nan, 0.1" in text
    # Nearest rank over 10, 11, 12, 30, 95: p50 is 12, p95 is 95 (over the 50 ms budget).
    assert "12.00" in text and "95.00" in text
    assert "WARNING probe [scores] differs" in text  # device text is not read as markup
    missing = cli(api, "updates", "show", "424242")
    assert missing.exit_code == 1 and "no update report 424242" in missing.output
