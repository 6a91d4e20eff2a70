"""Drift in the fleet view: windows from status reports stored once, summed per site and
model version, scored against the reference with the profile's thresholds, shown by the
API, ``edgefleet drift show``, ``/metrics``; bad windows refused with nothing stored."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session
from typer.testing import CliRunner

from edgefleet.cli import common
from edgefleet.cli.app import app as cli_app
from edgefleet.cli.client import Controller
from edgefleet.cli.output import console
from edgefleet.controller.models import DriftReference
from edgefleet.controller.services import drift
from edgefleet.drift.reference import Reference, compute
from edgefleet.drift.sketch import Sketch
from edgefleet.models.pack import read_signature
from tests.support.apiclient import Api
from tests.support.console import Browser, user_with_password
from tests.support.onnxmodels import affine
from tests.support.sqlwatch import request_statements

FEATURES = 4
WINDOW = 60


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reference]:
    folder = tmp_path_factory.mktemp("drift-fleet")
    path = affine(folder / "affine.onnx", inputs=FEATURES, outputs=3)
    x = np.random.default_rng(0).normal(size=(1000, FEATURES)).astype(np.float32)
    np.savez(folder / "ref.npz", x=x)
    return path, compute(path, folder / "ref.npz", read_signature(path))


@pytest.fixture(autouse=True)
def no_reference_read_yet() -> None:
    """Each test's controller starts knowing no reference (they are kept per process)."""
    drift._references.clear()
    drift._missing.clear()


def window(
    reference: tuple[Path, Reference], shift: float, start: int, n: int = 400, seed: int = 1
) -> dict[str, Any]:
    """A window as a runner closes it: real rows through the model into a real sketch."""
    import onnxruntime as ort

    path, ref = reference
    x = np.random.default_rng(seed).normal(shift, 1.0, size=(n, FEATURES)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sketch = Sketch(ref, window_seconds=WINDOW, now=start)
    for i in range(n):
        sketch.update({"x": x[i : i + 1]}, {"y": y[i : i + 1]}, now=start + 1)
    closed = sketch.roll(now=start + WINDOW)
    assert closed is not None
    return {"model": "affine", "digest": "sha256:" + "1" * 64, "artifact": ""} | sketch.to_wire(
        closed
    )


def fleet(api: Api) -> dict[str, Any]:
    """Two sites, a profile whose act threshold is 0.3, a device at each site."""
    api.site("shop-1")
    api.site("shop-2")
    api.profile("retail", {"drift": {"window_seconds": WINDOW, "thresholds": {"act": 0.3}}})
    return {
        site: api.device(api.token(site=site, profile="retail")["token"])
        for site in ("shop-1", "shop-2")
    }


def report(api: Api, dev: Any, windows: list[dict[str, Any]]) -> Any:
    body = {"applied_revision": 1, "drift": windows}
    return api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=body)


def known(api: Api, ref: Reference) -> None:
    """The reference as the controller keeps it once read from the registry (the end to
    end test reads it from a real one)."""
    with Session(api.client.app.state.rt.engine) as s:  # type: ignore[attr-defined]
        s.add(DriftReference(digest=ref.digest(), document=ref.to_bytes().decode()))
        s.commit()


def test_a_shifted_site_reads_act_and_an_unshifted_one_ok(
    api: Api, reference: tuple[Path, Reference]
) -> None:
    devices = fleet(api)
    known(api, reference[1])
    start = (int(time.time()) // WINDOW - 1) * WINDOW
    assert report(api, devices["shop-1"], [window(reference, 1.5, start)]).status_code == 200
    assert report(api, devices["shop-2"], [window(reference, 0.0, start)]).status_code == 200
    shown = api.ok("GET", "/drift", api.admin)
    by_site = {g["site"]: g for g in shown["groups"]}
    assert by_site["shop-1"]["level"] == "act" and by_site["shop-1"]["scored_by"] == "controller"
    assert by_site["shop-1"]["latest"]["psi"] > 0.3
    assert by_site["shop-1"]["thresholds"] == {"investigate": 0.1, "act": 0.3}
    assert by_site["shop-2"]["level"] == "ok" and by_site["shop-2"]["latest"]["psi"] < 0.1
    assert [a["site"] for a in shown["alerts"]] == ["shop-1"]
    only = api.ok("GET", "/drift", api.admin, params={"site": "shop-2"})
    assert [g["site"] for g in only["groups"]] == ["shop-2"] and only["alerts"] == []


def test_windows_of_one_site_are_summed_before_scoring(
    api: Api, reference: tuple[Path, Reference]
) -> None:
    """Two devices of a site, each with too few samples to score alone (< 100 per
    histogram), score together."""
    api.site("shop-1")
    api.profile("retail", {"drift": {"window_seconds": WINDOW}})
    tok = api.token(site="shop-1", profile="retail")["token"]
    a, b = api.device(tok), api.device(tok)
    known(api, reference[1])
    start = (int(time.time()) // WINDOW - 1) * WINDOW
    report(api, a, [window(reference, 2.0, start, n=60, seed=1)])
    report(api, b, [window(reference, 2.0, start, n=60, seed=2)])
    [group] = api.ok("GET", "/drift", api.admin)["groups"]
    assert group["latest"]["devices"] == 2 and group["latest"]["samples"] == 120
    assert group["level"] == "act"
    per_device = api.ok("GET", "/drift", api.admin, params={"by": "device"})["groups"]
    assert [g["latest"]["psi"] for g in per_device] == [None, None]  # too few alone


def test_a_window_sent_again_is_stored_once_and_a_heartbeat_writes_nothing(
    api: Api, reference: tuple[Path, Reference], monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = fleet(api)
    start = (int(time.time()) // WINDOW - 2) * WINDOW
    first, second = window(reference, 1.5, start), window(reference, 1.5, start + WINDOW)
    dev = devices["shop-1"]
    assert report(api, dev, [first, second]).status_code == 200
    assert report(api, dev, [second]).status_code == 200  # the latest travels again
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    with monkeypatch.context() as m:  # the write-behind flushes wait: every write is ours
        m.setattr(rt.last_seen, "flush", lambda: 0)
        m.setattr(rt.status_samples, "flush", lambda: 0)
        with request_statements(rt.engine) as statements:
            assert report(api, dev, [second]).status_code == 200  # a heartbeat
        assert not [s for s in statements if s.split()[0].upper() in ("INSERT", "UPDATE")]
        rt.status_digests.clear()  # another worker, or this one restarted: not a heartbeat
        with request_statements(rt.engine) as statements:
            assert report(api, dev, [second]).status_code == 200
    assert not [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    [group] = api.ok("GET", "/drift", api.admin)["groups"]
    assert [p["start"] for p in group["series"]] == [start, start + WINDOW]
    # without the reference (no artifact to read it from) the devices' own scores show
    assert group["scored_by"] == "device" and group["level"] == "act"


def test_a_malformed_window_is_refused_naming_the_field_and_stores_nothing(
    api: Api, reference: tuple[Path, Reference]
) -> None:
    devices = fleet(api)
    good = window(reference, 1.5, (int(time.time()) // WINDOW - 1) * WINDOW)
    for bad, field in (
        ({**good, "counts": [-1] * 10}, "drift.1.counts.0"),
        ({**good, "counts": [1] * 5000}, "drift.1.counts"),
        ({**good, "seconds": 0}, "drift.1.seconds"),
        ({k: v for k, v in good.items() if k != "reference"}, "drift.1.reference"),
    ):
        answer = report(api, devices["shop-1"], [good, bad])
        assert answer.status_code == 400, bad
        assert field in answer.json()["error"]["message"]
    too_many = report(api, devices["shop-1"], [good] * 17)
    assert too_many.status_code == 400
    assert api.ok("GET", "/drift", api.admin)["groups"] == []


def test_drift_show_and_metrics(
    api: Api,
    reference: tuple[Path, Reference],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    devices = fleet(api)
    known(api, reference[1])
    start = (int(time.time()) // WINDOW - 1) * WINDOW
    report(api, devices["shop-1"], [window(reference, 1.5, start)])
    report(api, devices["shop-2"], [window(reference, 0.0, start)])
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "absent.yaml"))
    transport = api.client._transport  # the in-process app behind the TestClient
    monkeypatch.setattr(common, "Controller", lambda cfg, _t: Controller(cfg, transport))
    runner = CliRunner()
    login = ["--url", "https://testserver", "--token", api.admin]
    monkeypatch.setattr(console, "width", 200)  # a terminal wide enough for every column
    table = runner.invoke(cli_app, [*login, "drift", "show"])
    assert table.exit_code == 0, table.output
    assert "ACT" in table.output and "shop-1" in table.output and "1 alert" in table.output
    shown = runner.invoke(cli_app, [*login, "drift", "show", "--site", "shop-2", "-o", "json"])
    assert [g["level"] for g in json.loads(shown.stdout)["groups"]] == ["ok"]
    bad = runner.invoke(cli_app, [*login, "drift", "show", "--hours", "0"])
    assert bad.exit_code != 0 and "hours" in bad.output
    families = {f.name: f for f in text_string_to_metric_families(api.client.get("/metrics").text)}
    psi = {s.labels["site"]: s.value for s in families["edgefleet_drift_psi"].samples}
    assert psi["shop-1"] > 0.3 and psi["shop-2"] < 0.1
    levels = {s.labels["level"]: s.value for s in families["edgefleet_drift_level"].samples}
    assert levels == {"ok": 1, "investigate": 0, "act": 1}


def test_the_console_shows_the_alert_and_a_chart_per_site(
    api: Api, reference: tuple[Path, Reference]
) -> None:
    devices = fleet(api)
    known(api, reference[1])
    start = (int(time.time()) // WINDOW - 1) * WINDOW
    report(api, devices["shop-1"], [window(reference, 1.5, start)])
    report(api, devices["shop-2"], [window(reference, 0.0, start)])
    browser = Browser(api)
    user_with_password(api, "vera", "viewer")
    assert browser.login("vera").status_code == 303
    page = browser.get("/console/drift")
    assert page.status_code == 200
    alerts = page.text.split('id="drift-alerts"')[1].split("</table>")[0]
    assert "shop-1" in alerts and ">act<" in alerts and "shop-2" not in alerts
    assert page.text.count('class="card drift-site"') == 2 and page.text.count("<svg") >= 2
    overview = browser.get("/console/").text.split('id="drift-alerts"')[1].split("</table>")[0]
    assert "shop-1" in overview and "shop-2" not in overview


def test_the_latest_windows_alone_give_the_alerts_and_old_windows_are_pruned(
    api: Api, reference: tuple[Path, Reference]
) -> None:
    """A site that drifted an hour ago and is back to normal now alerts no more; windows
    past the retention are deleted."""
    devices = fleet(api)
    known(api, reference[1])
    now = (int(time.time()) // WINDOW) * WINDOW
    dev = devices["shop-1"]
    report(api, dev, [window(reference, 1.5, now - 3600), window(reference, 0.0, now - WINDOW)])
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    latest = drift.view(rt, latest_only=True)
    assert [len(g["series"]) for g in latest["groups"]] == [1] and latest["alerts"] == []
    full = drift.view(rt)
    assert [p["level"] for p in full["groups"][0]["series"]] == ["act", "ok"]
    assert drift.prune(rt, now - 1800) == 1
    assert [p["start"] for p in drift.view(rt)["groups"][0]["series"]] == [now - WINDOW]


def test_a_window_naming_a_model_outside_the_profile_sends_the_controller_nowhere(
    api: Api, reference: tuple[Path, Reference], caplog: pytest.LogCaptureFixture
) -> None:
    devices = fleet(api)
    start = (int(time.time()) // WINDOW - 1) * WINDOW
    elsewhere = "127.0.0.1:9/somewhere@sha256:" + "2" * 64
    report(api, devices["shop-1"], [window(reference, 1.5, start) | {"artifact": elsewhere}])
    [group] = api.ok("GET", "/drift", api.admin)["groups"]
    assert group["scored_by"] == "device"
    assert "is not a model of the device's profile; not read" in caplog.text


def test_a_trailing_window_with_few_inferences_does_not_hide_the_alert(
    api: Api, reference: tuple[Path, Reference]
) -> None:
    """Traffic stopped mid-window: the last window has too few samples to score, and the
    level stays that of the newest window that scored, in the view and on the overview."""
    devices = fleet(api)
    known(api, reference[1])
    start = (int(time.time()) // WINDOW - 2) * WINDOW
    report(
        api,
        devices["shop-1"],
        [window(reference, 1.5, start), window(reference, 1.5, start + WINDOW, n=20)],
    )
    [group] = api.ok("GET", "/drift", api.admin)["groups"]
    assert [p["psi"] is None for p in group["series"]] == [False, True]
    assert group["level"] == "act" and group["latest"]["start"] == start
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    assert [a["site"] for a in drift.view(rt, latest_only=True)["alerts"]] == ["shop-1"]
