"""The device API as an agent and an operator see it: desired state with ETags, status
reports moving the lifecycle, write-behind last seen, listing and showing devices,
and what ``/metrics`` and the probes say about it."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from edgefleet.cli import common
from edgefleet.cli.app import app as cli_app
from edgefleet.cli.client import Controller
from edgefleet.controller.bootstrap import Prepared
from edgefleet.controller.settings import Settings
from edgefleet.signing import cert_pin
from tests.support.apiclient import Api
from tests.support.sqlwatch import request_statements

Json = dict[str, Any]


def desired(api: Api, dev: Any, etag: str | None = None) -> Any:
    headers = {"if-none-match": etag} if etag else {}
    return api.call("GET", f"/devices/{dev.id}/desired", dev.access_token, headers=headers)


def report(api: Api, dev: Any, body: Json | None = None) -> Any:
    return api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=body or {})


def show(api: Api, device_id: str) -> Json:
    return api.ok("GET", f"/devices/{device_id}", api.admin)


def enrolled(api: Api, **token: Any) -> Any:
    """A site, a profile, a token binding them, and one device enrolled with it."""
    api.site("shop-1")
    api.profile("retail", {"config": {"camera": "front"}})
    tok = api.token(profile="retail", **token)
    return api.device(tok["token"]), tok


# -- desired state -----------------------------------------------------------------------


def test_desired_has_an_etag_and_the_same_etag_gets_304(api: Api) -> None:
    dev, _ = enrolled(api)
    first = desired(api, dev)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    body = first.json()
    assert (body["device_id"], body["profile"], body["revision"]) == (dev.id, "retail", 1)
    assert body["config"] == {"camera": "front"}
    same = desired(api, dev, etag)
    assert (same.status_code, same.headers["etag"], same.content) == (304, etag, b"")
    other = desired(api, dev, '"something-else"')
    assert (other.status_code, other.headers["etag"]) == (200, etag)


def test_new_profile_revision_changes_etag_and_revision_never_a_stale_304(api: Api) -> None:
    dev, _ = enrolled(api)
    old = desired(api, dev).headers["etag"]
    assert desired(api, dev, old).status_code == 304  # cached by now
    applied = api.profile("retail", {"config": {"camera": "back"}})
    assert (applied["revision"], applied["created_revision"]) == (2, True)
    new = desired(api, dev, old)
    assert new.status_code == 200, "a new revision hidden behind a 304"
    assert new.headers["etag"] != old
    assert (new.json()["revision"], new.json()["config"]) == (2, {"camera": "back"})
    # The same spec again is no new revision: the device is not sent anything new.
    assert api.profile("retail", {"config": {"camera": "back"}})["created_revision"] is False
    assert desired(api, dev, new.headers["etag"]).status_code == 304


def test_desired_state_carries_the_root_the_registration_pins(api: Api) -> None:
    dev, tok = enrolled(api)
    bundle = desired(api, dev).json()["trust_bundle"]
    roots = [x509.load_pem_x509_certificate(pem.encode()) for pem in bundle]
    assert roots and all(c.subject == c.issuer for c in roots)
    assert tok["registration"]["root_pins"][0] in {cert_pin(c) for c in roots}


# -- status reports ----------------------------------------------------------------------


def test_status_reports_move_the_lifecycle(api: Api) -> None:
    dev, _ = enrolled(api)
    assert show(api, dev.id)["state"] == "enrolled"
    steps = [
        ({"applied_revision": 1}, "ready"),
        ({"applied_revision": 1, "health": {"ok": False}}, "degraded"),
        ({"applied_revision": 1, "updating": True}, "updating"),
        ({"applied_revision": 2}, "ready"),
    ]
    for body, state in steps:
        ack = report(api, dev, body)
        assert ack.status_code == 200, ack.text
        assert ack.json()["state"] == state, body
        shown = show(api, dev.id)
        assert (shown["state"], shown["applied_revision"]) == (state, body["applied_revision"])


def test_status_ack_carries_the_current_desired_etag(api: Api) -> None:
    dev, _ = enrolled(api)
    body = {"applied_revision": 1}
    before = report(api, dev, body).json()["desired_etag"]
    assert before == desired(api, dev).headers["etag"]
    api.profile("retail", {"config": {"camera": "back"}})
    ack = report(api, dev, body).json()  # the same report; the device has not polled since
    assert ack["desired_etag"] != before, "the ack hides the new revision"
    assert ack["desired_etag"] == desired(api, dev).headers["etag"]
    assert ack["interval_seconds"] == 1


def test_identical_report_is_a_heartbeat_that_only_advances_last_seen(api: Api) -> None:
    dev, _ = enrolled(api)
    body = {"applied_revision": 1, "buffer": {"depth": 3}}
    assert report(api, dev, body).json()["state"] == "ready"
    first = show(api, dev.id)
    engine = api.client.app.state.rt.engine  # type: ignore[attr-defined]
    time.sleep(0.01)
    with request_statements(engine) as statements:
        again = report(api, dev, body)
    assert again.status_code == 200 and again.json()["state"] == "ready"
    rewrites = [s for s in statements if "status" in s.lower()]
    assert rewrites == [], "a heartbeat read or rewrote the stored status"
    deadline = time.monotonic() + 5
    while (now := show(api, dev.id))["last_seen_at"] == first["last_seen_at"]:
        assert time.monotonic() < deadline, "last seen was not written behind within 5 s"
        time.sleep(0.05)
    assert datetime.fromisoformat(now["last_seen_at"]) > datetime.fromisoformat(
        first["last_seen_at"]
    )
    assert (now["status"], now["state"]) == (first["status"], first["state"])


def test_a_report_another_worker_stored_costs_a_read_not_a_write(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker meets each device's report once (its digest cache is its own): after a
    restart, 20,000 devices x 2 workers were 40,000 commits where 20,000 change anything."""
    dev, _ = enrolled(api)
    body = {"applied_revision": 1, "buffer": {"depth": 3}}
    assert report(api, dev, body).json()["state"] == "ready"
    first = show(api, dev.id)
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    rt.status_digests.clear()  # what a second worker, or this one restarted, knows
    time.sleep(0.01)
    with monkeypatch.context() as m:  # the write-behind flushes wait: every write is ours
        m.setattr(rt.last_seen, "flush", lambda: 0)
        m.setattr(rt.status_samples, "flush", lambda: 0)
        with request_statements(rt.engine) as statements:
            again = report(api, dev, body)
    assert again.status_code == 200 and again.json()["state"] == "ready"
    writes = [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert writes == [], f"a report already stored was written again: {writes}"
    assert [s for s in statements if "status_digest" in s], "the stored digest was not read"
    deadline = time.monotonic() + 5
    while show(api, dev.id)["last_seen_at"] == first["last_seen_at"]:
        assert time.monotonic() < deadline, "last seen was not written behind within 5 s"
        time.sleep(0.05)
    changed = report(api, dev, {"applied_revision": 2, "buffer": {"depth": 3}})
    assert changed.status_code == 200
    assert show(api, dev.id)["status"]["applied_revision"] == 2, "a changed report was lost"


def test_the_report_after_the_inventory_one_is_not_written_again(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent sends its inventory once; the next report says the same without it. It
    changes nothing stored, so it costs no commit (20,000 returning devices were 40,000
    commits), and a report that does change something is still written."""
    dev, _ = enrolled(api)
    body = {"applied_revision": 1, "buffer": {"depth": 3}}
    first = {**body, "inventory": {"hostname": "till-1", "arch": "aarch64"}}
    assert report(api, dev, first).status_code == 200
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    with monkeypatch.context() as m:  # the write-behind flushes wait: every write is ours
        m.setattr(rt.last_seen, "flush", lambda: 0)
        m.setattr(rt.status_samples, "flush", lambda: 0)
        with request_statements(rt.engine) as statements:
            again = report(api, dev, body)
    assert again.status_code == 200
    writes = [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert writes == [], f"a report that changed nothing was written: {writes}"
    shown = show(api, dev.id)
    assert shown["inventory"]["hostname"] == "till-1", "the inventory was lost"
    changed = report(api, dev, {**body, "buffer": {"depth": 4}})
    assert changed.status_code == 200
    assert show(api, dev.id)["status"]["buffer"]["depth"] == 4


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"health": {"ok": "perhaps"}}, "health.ok"),
        ({"slots": [{"name": "C"}]}, "slots.0.name"),
        ({"buffer": {"depth": -1}}, "buffer.depth"),
        ({"temperature": 71}, "temperature"),
    ],
    ids=["wrong-type", "bad-enum", "out-of-range", "unknown-field"],
)
def test_invalid_status_report_is_refused_naming_the_field_and_stores_nothing(
    api: Api, body: Json, field: str
) -> None:
    dev, _ = enrolled(api)
    before = show(api, dev.id)
    r = report(api, dev, body)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] in ("invalid_status", "invalid_request")
    assert field in r.json()["error"]["message"]
    after = show(api, dev.id)
    assert (after["state"], after["status"], after["inventory"]) == (
        before["state"],
        before["status"],
        before["inventory"],
    )


def test_inventory_in_a_status_report_replaces_the_stored_inventory(api: Api) -> None:
    api.site("shop-1")
    dev = api.device(api.token()["token"], hostname="old", cpu_count=4, accelerators=["npu"])
    assert show(api, dev.id)["inventory"]["hostname"] == "old"
    report(api, dev, {"inventory": {"hostname": "new", "memory_mb": 2048}})
    inventory = show(api, dev.id)["inventory"]
    assert (inventory["hostname"], inventory["memory_mb"]) == ("new", 2048)
    assert (inventory["cpu_count"], inventory["accelerators"]) == (None, []), "merged, not replaced"
    report(api, dev, {"applied_revision": 1})  # no inventory: the stored one stays
    assert show(api, dev.id)["inventory"] == inventory


# -- operators looking at devices --------------------------------------------------------


def _fleet(api: Api) -> dict[str, str]:
    api.site("shop-1")
    api.site("shop-2")
    gold = api.token(site="shop-1", labels={"tier": "gold", "zone": "eu"})["token"]
    silver = api.token(site="shop-2", labels={"tier": "silver", "zone": "eu"})["token"]
    devices = {"a": api.device(gold), "b": api.device(gold), "c": api.device(silver)}
    assert report(api, devices["b"], {"applied_revision": 0}).status_code == 200
    return {name: d.id for name, d in devices.items()}


def test_list_devices_filters_by_site_state_and_labels(api: Api) -> None:
    ids = _fleet(api)

    def listed(**params: Any) -> set[str]:
        found = api.ok("GET", "/devices", api.admin, params=params)
        return {name for name, i in ids.items() if i in {d["id"] for d in found}}

    assert listed() == {"a", "b", "c"}
    assert listed(site="shop-1") == {"a", "b"}
    assert listed(state="ready") == {"b"}
    assert listed(label="tier=silver") == {"c"}
    assert listed(label=["zone=eu", "tier=gold"]) == {"a", "b"}
    assert listed(site="shop-1", state="enrolled", label="tier=gold") == {"a"}
    assert listed(site="shop-2", label="tier=gold") == set()
    for params, code in [({"label": "tier"}, "bad_label"), ({"state": "asleep"}, "bad_state")]:
        r = api.call("GET", "/devices", api.admin, params=params)
        assert (r.status_code, r.json()["error"]["code"]) == (400, code)


def test_cli_devices_list_output_json_is_the_api_json(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fleet(api)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "absent.yaml"))
    transport = api.client._transport  # the in-process app behind the TestClient
    monkeypatch.setattr(common, "Controller", lambda cfg, _t: Controller(cfg, transport))
    args = ["--url", "https://testserver", "--token", api.admin, "devices", "list"]
    for flags, params in [
        ([], {}),
        (["--site", "shop-1", "--label", "tier=gold"], {"site": "shop-1", "label": "tier=gold"}),
    ]:
        result = CliRunner().invoke(cli_app, [*args, *flags, "--output", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == api.ok("GET", "/devices", api.admin, params=params)


def test_show_unknown_device_is_404_naming_it(api: Api) -> None:
    r = api.call("GET", "/devices/dev-0000000000000000", api.admin)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_device"
    assert "dev-0000000000000000" in r.json()["error"]["message"]


# -- metrics and probes ------------------------------------------------------------------


def _samples(api: Api) -> list[Any]:
    r = api.client.get("/metrics")
    assert r.status_code == 200
    return [s for family in text_string_to_metric_families(r.text) for s in family.samples]


def _value(samples: list[Any], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return float(found[0])


def test_metrics_show_enrolments_requests_by_route_latency_and_devices_by_state(
    api: Api,
) -> None:
    ids = _fleet(api)  # three devices enrolled, one of them ready
    assert api.enrol("efr.0123456789ab." + "x" * 43).status_code == 401
    text = api.client.get("/metrics").text
    samples = _samples(api)
    assert _value(samples, "edgefleet_enrolments_total", outcome="enrolled") == 3
    assert _value(samples, "edgefleet_enrolments_total", outcome="token_invalid") == 1
    status_routes = {
        s.labels["route"]
        for s in samples
        if s.name == "edgefleet_http_requests_total" and s.labels["route"].endswith("/status")
    }
    assert len(status_routes) == 1, status_routes
    route = status_routes.pop()
    assert route.endswith("/devices/{device_id}/status")
    # Device ids label only the per-device buffer gauges (result lag, depth, drops).
    per_device = {"edgefleet_results_lag_seconds", "edgefleet_buffer_depth"}
    assert {s.labels["device"] for s in samples if s.name in per_device} == set(ids.values())
    labelled = (*per_device, "edgefleet_buffer_drops")
    others = [line for line in text.splitlines() if not line.startswith(labelled)]
    assert not any(i in line for i in ids.values() for line in others), "a device id label"
    assert (
        _value(samples, "edgefleet_http_requests_total", method="POST", route=route, status="200")
        == 1
    )
    latency = "edgefleet_http_request_duration_seconds"
    assert _value(samples, f"{latency}_count", method="POST", route=route) == 1
    assert _value(samples, f"{latency}_bucket", method="POST", route=route, le="+Inf") == 1
    assert _value(samples, f"{latency}_sum", method="POST", route=route) > 0
    ready = api.ok("GET", "/devices", api.admin, params={"state": "ready"})
    assert _value(samples, "edgefleet_devices", state="ready") == len(ready) == 1
    assert _value(samples, "edgefleet_devices", state="enrolled") == 2


def test_health_and_readiness_probes_answer_200(api: Api) -> None:
    healthz, readyz = api.client.get("/healthz"), api.client.get("/readyz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
    assert (readyz.status_code, readyz.json()) == (200, {"status": "ready"})


def test_overloaded_worker_answers_503_with_retry_after(
    settings: Settings, prepared: Prepared
) -> None:
    """A worker past its in-flight limit sheds load instead of queueing without bound."""
    from fastapi.testclient import TestClient

    from edgefleet.controller.app import create_app

    app = create_app(settings.model_copy(update={"max_inflight_requests": 0}))
    with TestClient(app) as client:
        r = client.get("/api/v1/pki/chain")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "overloaded"


@pytest.mark.parametrize("longest", [3, 20])
def test_the_longest_retry_after_is_the_operators_setting(
    settings: Settings, prepared: Prepared, longest: int
) -> None:
    """Shedding hard, a worker spreads the shed over Retry-Afters up to the setting, never
    past it (an operator with a long device interval may allow longer waits)."""
    from fastapi.testclient import TestClient

    from edgefleet.controller.app import create_app

    update = {"max_inflight_requests": 0, "shed_retry_after_max_seconds": longest}
    app = create_app(settings.model_copy(update=update))
    with TestClient(app) as client:
        waits = [int(client.get("/api/v1/pki/chain").headers["retry-after"]) for _ in range(300)]
    assert max(waits) <= longest
    assert max(waits) > 3 if longest > 3 else max(waits) == longest, sorted(set(waits))


def test_profile_interval_reaches_the_device_in_desired_state_and_ack(api: Api) -> None:
    api.site()
    api.profile("slow", {"policies": {"interval_seconds": 120}})
    dev = api.device(api.token(profile="slow")["token"])
    desired = api.ok("GET", f"/devices/{dev.id}/desired", dev.access_token)
    ack = api.ok("POST", f"/devices/{dev.id}/status", dev.access_token, json={})
    assert desired["interval_seconds"] == ack["interval_seconds"] == 120
