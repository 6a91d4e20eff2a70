"""Shadow comparisons in the fleet, on SQLite and PostgreSQL: agreement windows from
status reports stored once and summed by site, device, profile and model; a report
without any costs no statement on their table; bad windows refused with nothing stored;
a quantized model's ``parent`` in the desired state (and its repository in the device's
pull token), shown by the API, ``edgefleet drift agreement``, the console's drift page
and ``/metrics``; old windows pruned; ``models push --quantize`` prints the profile
entry with its parent."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlmodel import Session
from typer.testing import CliRunner

from edgefleet.cli import common
from edgefleet.cli.app import app as cli_app
from edgefleet.cli.client import Controller
from edgefleet.cli.output import console
from edgefleet.controller.models import ShadowWindowRecord
from edgefleet.controller.services import shadow
from tests.support.apiclient import Api, TestDevice
from tests.support.console import Browser, user_with_password
from tests.support.onnxmodels import affine
from tests.support.registry import Registry
from tests.support.sqlwatch import request_statements

INT8 = "registry.test:5000/models/detector@sha256:" + "c" * 64
FP32 = "registry.test:5000/models/detector-fp32@sha256:" + "d" * 64
WINDOW = 60


def window(start: int, compared: int, agree: int, diff: float, **extra: Any) -> dict[str, Any]:
    return {
        "key": "parent",
        "model": "detector",
        "active_digest": "sha256:" + "c" * 64,
        "candidate_digest": "sha256:" + "d" * 64,
        "start": start,
        "seconds": WINDOW,
        "compared": compared,
        "top1_total": compared,
        "top1_agree": agree,
        "abs_diff_sum": diff * compared,
        "abs_diff_max": diff * 3,
        **extra,
    }


def latency(active: float, candidate: float) -> dict[str, Any]:
    return {
        "active_latency": {"p50_ms": active / 2, "p95_ms": active},
        "candidate_latency": {"p50_ms": candidate / 2, "p95_ms": candidate},
    }


def fleet(api: Api) -> dict[str, list[TestDevice]]:
    """Two sites running the INT8 detector with its full-precision parent: two devices
    at shop-1, one at shop-2."""
    api.site("shop-1")
    api.site("shop-2")
    spec = {
        "models": [{"name": "detector", "reference": INT8, "parent": FP32}],
        "shadow": {"sample_rate": 0.25, "window_seconds": WINDOW},
    }
    api.profile("retail", spec)
    out = {}
    for site, n in (("shop-1", 2), ("shop-2", 1)):
        token = api.token(site=site, profile="retail")["token"]
        out[site] = [api.device(token) for _ in range(n)]
    return out


def report(api: Api, dev: TestDevice, windows: list[dict[str, Any]], applied: int = 1) -> Any:
    body = {"applied_revision": applied, "shadow": windows}
    return api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=body)


def stored(api: Api) -> int:
    with Session(api.client.app.state.rt.engine) as s:  # type: ignore[attr-defined]
        return s.scalar(select(func.count()).select_from(ShadowWindowRecord)) or 0


def test_windows_are_stored_once_and_summed_by_site_device_and_model(api: Api) -> None:
    devices = fleet(api)
    start = (int(time.time()) // WINDOW - 2) * WINDOW
    a, b = devices["shop-1"]
    (c,) = devices["shop-2"]
    assert report(api, a, [window(start, 100, 90, 0.02, **latency(4.0, 9.0))]).status_code == 200
    assert report(api, b, [window(start, 300, 297, 0.01, **latency(6.0, 11.0))]).status_code == 200
    assert report(api, c, [window(start, 50, 25, 0.5, **latency(5.0, 10.0))]).status_code == 200
    # a's window sent again as it was, then with more inferences (a runner merged them)
    assert report(api, a, [window(start, 100, 90, 0.02, **latency(4.0, 9.0))]).status_code == 200
    assert stored(api) == 3
    grown = window(start, 200, 180, 0.02, **latency(4.0, 9.0))
    assert report(api, a, [grown, window(start + WINDOW, 10, 10, 0.0)]).status_code == 200
    assert stored(api) == 4

    by_site = api.ok("GET", "/drift/agreement", api.admin, params={"key": "parent"})
    groups = {g["site"]: g for g in by_site["groups"]}
    shop1 = groups["shop-1"]
    assert shop1["devices"] == 2 and shop1["windows"] == 3 and shop1["compared"] == 510
    assert shop1["agreement"] == pytest.approx((180 + 297 + 10) / 510)
    assert shop1["mad"] == pytest.approx((0.02 * 200 + 0.01 * 300) / 510)
    assert shop1["max_abs_diff"] == pytest.approx(0.06)
    assert shop1["active_p95_ms"] == 5.0 and shop1["candidate_p95_ms"] == 10.0  # means
    assert groups["shop-2"]["agreement"] == 0.5 and groups["shop-2"]["mad"] == 0.5
    per_device = api.ok("GET", "/drift/agreement", api.admin, params={"by": "device"})
    assert {g["device"]: g["compared"] for g in per_device["groups"]} == {
        a.id: 210,
        b.id: 300,
        c.id: 50,
    }
    [per_model] = api.ok("GET", "/drift/agreement", api.admin, params={"by": "model"})["groups"]
    assert per_model["compared"] == 560 and per_model["devices"] == 3
    [per_profile] = api.ok("GET", "/drift/agreement", api.admin, params={"by": "profile"})["groups"]
    assert per_profile["profile"] == "retail"
    only = api.ok("GET", "/drift/agreement", api.admin, params={"site": "shop-2"})["groups"]
    assert [g["site"] for g in only] == ["shop-2"]
    assert api.ok("GET", "/drift/agreement", api.admin, params={"key": "rollout-9"})["groups"] == []
    bad = api.call("GET", "/drift/agreement", api.admin, params={"by": "planet"})
    assert bad.status_code == 422


def test_a_report_without_windows_touches_no_shadow_table_and_one_sent_again_writes_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = fleet(api)
    dev = devices["shop-1"][0]
    start = (int(time.time()) // WINDOW - 1) * WINDOW
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    with monkeypatch.context() as m:  # the write-behind flushes wait: every write is ours
        m.setattr(rt.last_seen, "flush", lambda: 0)
        m.setattr(rt.status_samples, "flush", lambda: 0)
        with request_statements(rt.engine) as statements:
            assert report(api, dev, [], applied=1).status_code == 200
        assert not [s for s in statements if "shadowwindow" in s.lower()]
        assert report(api, dev, [window(start, 100, 99, 0.01)]).status_code == 200
        rt.status_digests.clear()  # another worker: the same report is not a heartbeat
        with request_statements(rt.engine) as statements:
            assert report(api, dev, [window(start, 100, 99, 0.01)]).status_code == 200
    writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    assert not [s for s in writes if "shadowwindow" in s.lower()]
    assert stored(api) == 1


def test_a_malformed_window_is_refused_naming_the_field_and_stores_nothing(api: Api) -> None:
    devices = fleet(api)
    dev = devices["shop-1"][0]
    good = window((int(time.time()) // WINDOW - 1) * WINDOW, 100, 90, 0.01)
    for bad, words in (
        ({**good, "top1_agree": 101}, "top1_agree <= top1_total <= compared"),
        ({**good, "compared": -1}, "shadow.1.compared"),
        ({**good, "abs_diff_sum": float("inf")}, "shadow.1.abs_diff_sum"),
        ({k: v for k, v in good.items() if k != "key"}, "shadow.1.key"),
        ({**good, "seconds": 0}, "shadow.1.seconds"),
    ):
        body = json.dumps({"applied_revision": 1, "shadow": [good, bad]}, allow_nan=True)
        answer = api.call(
            "POST",
            f"/devices/{dev.id}/status",
            dev.access_token,
            content=body,
            headers={"content-type": "application/json"},
        )
        assert answer.status_code in (400, 422), bad
        assert words in answer.json()["error"]["message"], answer.text
    assert report(api, dev, [good] * 17).status_code == 400
    assert stored(api) == 0


def test_a_quantized_model_runs_its_parent_in_shadow_and_others_keep_their_etag(
    api: Api,
) -> None:
    devices = fleet(api)
    dev = devices["shop-1"][0]
    desired = api.ok("GET", f"/devices/{dev.id}/desired", dev.access_token)
    assert desired["shadow"] == {
        "models": [
            {
                "key": "parent",
                "active": "detector",
                "model": {
                    "name": "detector",
                    "reference": FP32,
                    "digest": "sha256:" + "d" * 64,
                    "origin": "https://registry.test:5000",
                },
            }
        ],
        "sample_rate": 0.25,
        "window_seconds": WINDOW,
    }
    token = api.ok("GET", f"/devices/{dev.id}/registry-token", dev.access_token)["token"]
    access = jwt.decode(token, options={"verify_signature": False})["access"]
    assert {a["name"] for a in access} == {"models/detector", "models/detector-fp32"}
    # a profile without a parent: no shadow section at all
    api.profile("plain", {"models": [{"name": "detector", "reference": INT8}]})
    other = api.device(api.token(site="shop-1", profile="plain")["token"])
    plain = api.ok("GET", f"/devices/{other.id}/desired", other.access_token)
    assert "shadow" not in plain
    # the parent must be another model
    same = {"models": [{"name": "detector", "reference": INT8, "parent": INT8}]}
    answer = api.call("POST", "/profiles", api.admin, json={"name": "plain", "spec": same})
    assert answer.status_code in (400, 422)
    assert "the parent is the model itself" in answer.text


def test_agreement_in_the_cli_the_console_and_metrics(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    devices = fleet(api)
    start = (int(time.time()) // WINDOW - 1) * WINDOW
    report(api, devices["shop-1"][0], [window(start, 400, 396, 0.004, **latency(3.0, 7.5))])
    report(api, devices["shop-2"][0], [window(start, 100, 80, 0.08, **latency(3.0, 7.5))])
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "absent.yaml"))
    transport = api.client._transport  # the in-process app behind the TestClient
    monkeypatch.setattr(common, "Controller", lambda cfg, _t: Controller(cfg, transport))
    monkeypatch.setattr(console, "width", 200)
    runner = CliRunner()
    login = ["--url", "https://testserver", "--token", api.admin]
    table = runner.invoke(cli_app, [*login, "drift", "agreement", "--key", "parent"])
    assert table.exit_code == 0, table.output
    rows = {
        site: next(line for line in table.output.splitlines() if site in line)
        for site in ("shop-1", "shop-2")
    }
    assert "99.0%" in rows["shop-1"] and "80.0%" in rows["shop-2"]
    assert "3 ms" in rows["shop-1"] and "7.5 ms" in rows["shop-1"]
    shown = runner.invoke(cli_app, [*login, "drift", "agreement", "--site", "shop-2", "-o", "json"])
    assert [g["compared"] for g in json.loads(shown.stdout)["groups"]] == [100]
    bad = runner.invoke(cli_app, [*login, "drift", "agreement", "--by", "planet"])
    assert bad.exit_code != 0 and "site, device, model or profile" in bad.output

    browser = Browser(api)
    user_with_password(api, "vera", "viewer")
    assert browser.login("vera").status_code == 303
    page = browser.get("/console/drift")
    assert page.status_code == 200 and "INT8 vs full precision" in page.text
    section = page.text.split('id="parent-agreement"')[1].split("</section>")[0]
    assert "shop-1" in section and "99.0%" in section and "80.0%" in section

    families = {f.name: f for f in text_string_to_metric_families(api.client.get("/metrics").text)}
    [ratio] = families["edgefleet_shadow_agreement"].samples
    assert ratio.labels == {"model": "detector", "key": "parent"}
    assert ratio.value == pytest.approx(476 / 500)
    [compared] = families["edgefleet_shadow_compared"].samples
    assert compared.value == 500


def test_old_windows_are_pruned(api: Api) -> None:
    devices = fleet(api)
    now = (int(time.time()) // WINDOW) * WINDOW
    dev = devices["shop-1"][0]
    report(api, dev, [window(now - 7200, 100, 100, 0.0), window(now - WINDOW, 100, 100, 0.0)])
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    assert shadow.prune(rt, now - 3600) == 1
    [group] = shadow.view(rt, hours=24)["groups"]
    assert group["windows"] == 1 and group["last_start"] == now - WINDOW


def test_push_with_int8_prints_the_profile_entry_with_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "absent.yaml"))
    for name in ("EDGEFLEET_URL", "EDGEFLEET_TOKEN", "EDGEFLEET_REGISTRY_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(console, "width", 300)
    model = affine(tmp_path / "affine.onnx", inputs=32)
    with Registry(tmp_path / "reg") as reg:
        out = CliRunner().invoke(
            cli_app,
            ["models", "push", str(model), "--name", "models/affine", "--version", "1.0",
             "--registry", reg.host, "--plain-http", "--quantize", "int8"],
        )  # fmt: skip
    assert out.exit_code == 0, out.output
    lines = [line.strip() for line in out.output.splitlines()]
    fp32 = next(line for line in lines if line.startswith("pushed") and ":1.0@" in line)
    int8 = next(line for line in lines if line.startswith("pushed") and ":1.0-int8@" in line)
    assert "- name: affine" in lines
    assert f"reference: {int8.split()[1]}" in lines
    assert f"parent: {fp32.split()[1]}" in lines
