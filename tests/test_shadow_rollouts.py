"""A rollout's shadow phase through the real app, on SQLite and PostgreSQL, with devices
that speak the device API from the test: a wave's devices are given the target's changed
models in shadow, report agreement windows in their status, and the shadow gates read
them. A disagreeing wave stops the rollout before any device is moved; an agreeing one
goes on to activation and completes. Too little evidence, pause, resume, abort and a
restart mid-shadow; bad specs refused with 422.

The end-to-end version with real agents is tests/test_shadow_e2e.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgefleet.cli import common
from edgefleet.cli.app import app as cli_app
from edgefleet.cli.client import Controller
from edgefleet.cli.output import console
from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import Prepared
from edgefleet.controller.settings import Settings
from tests.support.apiclient import Api
from tests.support.console import Browser, user_with_password
from tests.test_rollouts_engine import HOURLY, Fleet

OLD = "registry.test:5000/models/detector@sha256:" + "a" * 64
NEW = "registry.test:5000/models/detector@sha256:" + "b" * 64
NEW_DIGEST = "sha256:" + "b" * 64
WINDOW = 10


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


class ShadowFleet(Fleet):
    """Devices of profile ``vision`` running model ``detector`` at ``OLD``; revision 2
    (held) changes it to ``NEW``."""

    def __init__(self, api: Api) -> None:  # not Fleet's: revision 1 runs the model
        self.api = api
        self.devices = {}
        api.profile("vision", {**HOURLY, "models": [{"name": "detector", "reference": OLD}]})

    def hold_new_model(self) -> None:
        self.hold(models=[{"name": "detector", "reference": NEW}])

    def state(self, device_id: str) -> dict[str, Any]:
        dev = self.devices[device_id]
        return self.api.ok("GET", f"/devices/{device_id}/desired", dev.access_token)  # type: ignore[no-any-return]

    def shadowed(self, ids: list[str]) -> set[str]:
        return {d for d in ids if self.state(d).get("shadow")}

    def agree(
        self, device_id: str, rid: int, compared: int, agree: int, diff: float = 0.001
    ) -> None:
        """The device reports one closed agreement window of the rollout's candidate."""
        start = (int(time.time()) // WINDOW - 1) * WINDOW
        window = {
            "key": f"rollout-{rid}",
            "model": "detector",
            "active_digest": "sha256:" + "a" * 64,
            "candidate_digest": NEW_DIGEST,
            "start": start,
            "seconds": WINDOW,
            "compared": compared,
            "top1_total": compared,
            "top1_agree": agree,
            "abs_diff_sum": diff * compared,
            "abs_diff_max": diff * 4,
            "active_latency": {"p50_ms": 2.0, "p95_ms": 3.0},
            "candidate_latency": {"p50_ms": 1.0, "p95_ms": 1.5},
        }
        self.report(device_id, 1, shadow=[window])

    def create_shadowed(self, **spec: Any) -> dict[str, Any]:
        body = {
            "waves": "50%,100%",
            "shadow_seconds": 4,
            "shadow_window_seconds": 1,
            "gates": {"min_agreement": 0.9, "max_mad": 0.05, "min_shadow_samples": 100},
            **spec,
        }
        return self.create(**body)


@pytest.fixture
def fleet(app_api: Api) -> ShadowFleet:
    return ShadowFleet(app_api)


def _wave_devices(fleet: ShadowFleet, rid: int, wave: int) -> list[str]:
    rows = fleet.api.ok("GET", f"/rollouts/{rid}/devices", fleet.api.admin, params={"wave": wave})
    return [row["device"] for row in rows]


def test_a_disagreeing_wave_stops_the_rollout_before_activation(fleet: ShadowFleet) -> None:
    ids = fleet.enrol(4)
    fleet.hold_new_model()
    r = fleet.create_shadowed(on_failure="rollback")
    rid = r["id"]
    fleet.wait(rid, lambda x: x["waves"][0]["state"] == "shadowing", "the shadow phase")
    first = _wave_devices(fleet, rid, 1)
    assert len(first) == 2
    assert fleet.shadowed(ids) == set(first)  # only the wave's devices shadow
    plan = fleet.state(first[0])["shadow"]
    assert plan["models"] == [
        {
            "key": f"rollout-{rid}",
            "active": "detector",
            "model": {
                "name": "detector",
                "reference": NEW,
                "digest": NEW_DIGEST,
                "origin": "https://registry.test:5000",
            },
        }
    ]
    assert plan["window_seconds"] == 1
    assert fleet.state(first[0])["revision"] == 1  # still the active revision
    token = fleet.api.ok(
        "GET", f"/devices/{first[0]}/registry-token", fleet.devices[first[0]].access_token
    )
    assert token["token"]  # the candidate's repository is the device's to pull
    for d in first:
        fleet.agree(d, rid, compared=200, agree=120)  # 60% agreement
    done = fleet.wait(rid, lambda x: x["state"] == "rolled_back", "the shadow gate to fail")
    assert "top-1 agreement 60.0%" in done["reason"] and "min_agreement 90.0%" in done["reason"]
    assert {fleet.desired(d) for d in ids} == {1}  # nobody moved
    assert fleet.shadowed(ids) == set()  # the shadow ended with it
    wave = done["waves"][0]
    assert wave["state"] == "failed" and wave["gate"]["ok"] is False
    evidence = wave["shadow"]
    assert evidence["verdict"]["ok"] is False and evidence["devices"] == 2
    [model] = evidence["models"]
    assert model["compared"] == 400 and model["agreement"] == pytest.approx(0.6)
    assert model["active_p95_ms"] == 3.0 and model["candidate_p95_ms"] == 1.5
    assert done["counts"]["succeeded"] == 0 and done["counts"]["updating"] == 0
    actions = [e["action"] for e in done["events"]]
    assert "shadow_started" in actions and "gate_failed" in actions
    assert "devices_moved" not in actions


def test_an_agreeing_wave_proceeds_to_activation_and_completes(fleet: ShadowFleet) -> None:
    ids = fleet.enrol(4)
    fleet.hold_new_model()
    rid = fleet.create_shadowed()["id"]
    for wave in (1, 2):
        fleet.wait(
            rid,
            lambda x, n=wave: x["waves"][n - 1]["state"] == "shadowing",
            f"wave {wave}'s shadow phase",
        )
        members = _wave_devices(fleet, rid, wave)
        assert {fleet.desired(d) for d in members} == {1}
        for d in members:
            fleet.agree(d, rid, compared=150, agree=149)
        fleet.wait(
            rid,
            lambda x, n=wave: x["waves"][n - 1]["state"] not in ("pending", "shadowing"),
            f"wave {wave}'s shadow gate",
        )
        fleet.settle(members, 2)  # activated once the gate passed
        assert fleet.shadowed(members) == set()
        for d in members:
            fleet.report(d, 2)
    done = fleet.wait(rid, lambda x: x["state"] != "running", "the rollout to end")
    assert done["state"] == "completed", done["reason"]
    assert done["counts"]["succeeded"] == 4
    for wave in done["waves"]:
        assert wave["state"] == "passed" and wave["shadow"]["verdict"]["ok"] is True
        assert wave["shadow"]["models"][0]["agreement"] == pytest.approx(149 / 150)
    actions = [e["action"] for e in done["events"]]
    assert actions.count("shadow_passed") == 2
    assert actions.index("shadow_passed") < actions.index("devices_moved")
    assert {fleet.desired(d) for d in ids} == {2}


def test_too_little_evidence_fails_the_gate_and_says_so(fleet: ShadowFleet) -> None:
    ids = fleet.enrol(2)
    fleet.hold_new_model()
    rid = fleet.create_shadowed(waves="100%", on_failure="pause")["id"]
    fleet.wait(rid, lambda x: x["waves"][0]["state"] == "shadowing", "the shadow phase")
    fleet.agree(ids[0], rid, compared=30, agree=30)  # one device, 30 inferences
    done = fleet.wait(rid, lambda x: x["state"] == "paused", "the gate to pause it")
    assert "only 30 compared inference(s) from 1 device(s)" in done["reason"]
    assert "min_shadow_samples 100" in done["reason"]
    assert {fleet.desired(d) for d in ids} == {1} and fleet.shadowed(ids) == set()
    # resuming past the failed gate accepts it: the devices are moved
    fleet.api.ok("POST", f"/rollouts/{rid}/resume", fleet.api.admin, json={"reason": "ok"})
    fleet.settle(ids, 2)
    fleet.converge(rid)
    done = fleet.rollout(rid)
    assert done["state"] == "completed"
    assert done["waves"][0]["shadow"]["overridden_by"] == "admin"


def test_pause_keeps_the_shadow_and_abort_ends_it(fleet: ShadowFleet) -> None:
    ids = fleet.enrol(2)
    fleet.hold_new_model()
    rid = fleet.create_shadowed(waves="100%", shadow_seconds=3600, shadow_window_seconds=60)["id"]
    fleet.wait(rid, lambda x: x["waves"][0]["state"] == "shadowing", "the shadow phase")
    fleet.api.ok("POST", f"/rollouts/{rid}/pause", fleet.api.admin, json={"reason": "lunch"})
    assert fleet.shadowed(ids) == set(ids)  # comparing moves nothing: it goes on
    fleet.api.ok("POST", f"/rollouts/{rid}/resume", fleet.api.admin, json={})
    assert fleet.rollout(rid)["waves"][0]["state"] == "shadowing"
    out = fleet.api.ok("POST", f"/rollouts/{rid}/abort", fleet.api.admin, json={"reason": "no"})
    assert out["state"] == "aborted" and out["waves"][0]["state"] == "failed"
    assert fleet.shadowed(ids) == set() and {fleet.desired(d) for d in ids} == {1}


def test_rollback_during_the_shadow_ends_it(fleet: ShadowFleet) -> None:
    ids = fleet.enrol(2)
    fleet.hold_new_model()
    rid = fleet.create_shadowed(waves="100%", shadow_seconds=3600, shadow_window_seconds=60)["id"]
    fleet.wait(rid, lambda x: x["waves"][0]["state"] == "shadowing", "the shadow phase")
    assert fleet.shadowed(ids) == set(ids)
    out = fleet.api.ok("POST", f"/rollouts/{rid}/rollback", fleet.api.admin, json={})
    assert out["state"] == "rolled_back" and out["reverted_devices"] == []
    assert fleet.shadowed(ids) == set() and {fleet.desired(d) for d in ids} == {1}


def test_a_restarted_controller_resumes_the_shadow_phase(
    fast: Settings, prepared: Prepared
) -> None:
    assert prepared.new_admin_token is not None
    app = create_app(fast)
    with TestClient(app, base_url="https://testserver") as client:
        fleet = ShadowFleet(Api(client, prepared.new_admin_token, prepared.controller_id))
        ids = fleet.enrol(2)
        fleet.hold_new_model()
        rid = fleet.create_shadowed(waves="100%", shadow_seconds=4, shadow_window_seconds=1)["id"]
        fleet.wait(rid, lambda x: x["waves"][0]["state"] == "shadowing", "the shadow phase")
        devices = fleet.devices
    app.state.rt.engine.dispose()
    app = create_app(fast)  # a new process's view: only the database
    with TestClient(app, base_url="https://testserver") as client:
        fleet = ShadowFleet.__new__(ShadowFleet)
        fleet.api = Api(client, prepared.new_admin_token, prepared.controller_id)
        fleet.devices = devices
        assert fleet.shadowed(ids) == set(ids)
        for d in ids:
            fleet.agree(d, rid, compared=100, agree=100)
        fleet.settle(ids, 2)
        fleet.converge(rid)
        done = fleet.rollout(rid)
        assert done["state"] == "completed"
        assert [e["action"] for e in done["events"]].count("shadow_started") == 1
    app.state.rt.engine.dispose()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"gates": {"min_agreement": 0.9}}, "set shadow_seconds above 0"),
        ({"shadow_seconds": 30, "shadow_window_seconds": 60}, "shorter than one agreement"),
        ({"shadow_seconds": 60, "gates": {"min_agreement": 1.5}}, "less than or equal to 1"),
        ({"shadow_seconds": 60, "shadow_sample_rate": 0}, "greater than 0"),
        ({"shadow_seconds": 60, "gates": {"max_mad": -1}}, "greater than or equal to 0"),
        ({"shadow_seconds": 60, "gates": {"min_shadow_samples": -5}}, "greater than or equal"),
    ],
)
def test_bad_shadow_specs_get_a_clear_422(
    fleet: ShadowFleet, spec: dict[str, Any], words: str
) -> None:
    fleet.enrol(1)
    fleet.hold_new_model()
    for path in ("/rollouts/plan", "/rollouts"):
        res = fleet.api.call(
            "POST", path, fleet.api.admin, json={"profile": "vision", "seed": "s", **spec}
        )
        assert res.status_code == 422, res.text
        assert words in res.json()["error"]["message"]
    assert fleet.api.ok("GET", "/rollouts", fleet.api.admin) == []


def test_the_plan_shows_the_shadow_phase_and_k3s_profiles_refuse_it(fleet: ShadowFleet) -> None:
    fleet.enrol(2)
    fleet.hold_new_model()
    body = {"profile": "vision", "seed": "s", "waves": "1,100%", "bake_seconds": 0}
    plan = fleet.api.ok(
        "POST",
        "/rollouts/plan",
        fleet.api.admin,
        json={**body, "shadow_seconds": 600, "gates": {"min_agreement": 0.95}},
    )
    assert plan["shadow"]["models"] == [{"name": "detector", "candidate": NEW}]
    assert plan["shadow"]["gates"]["min_agreement"] == 0.95
    assert [w["shadow_seconds"] for w in plan["waves"]] == [600, 600]
    assert plan["expected_seconds"] >= 1200
    none = fleet.api.ok("POST", "/rollouts/plan", fleet.api.admin, json=body)
    assert none["shadow"] is None
    fleet.hold(mode="k3s", models=[{"name": "detector", "reference": NEW}])
    res = fleet.api.call(
        "POST", "/rollouts/plan", fleet.api.admin, json={**body, "shadow_seconds": 600}
    )
    assert res.status_code == 400 and res.json()["error"]["code"] == "shadow_unsupported"


def test_the_evidence_is_shown_by_rollouts_show_and_the_console(
    fleet: ShadowFleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ids = fleet.enrol(2)
    fleet.hold_new_model()
    rid = fleet.create_shadowed(waves="100%", on_failure="pause")["id"]
    fleet.wait(rid, lambda x: x["waves"][0]["state"] == "shadowing", "the shadow phase")
    for d in ids:
        fleet.agree(d, rid, compared=100, agree=70, diff=0.2)
    fleet.wait(rid, lambda x: x["state"] == "paused", "the gate to pause it")

    api = fleet.api
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "absent.yaml"))
    transport = api.client._transport  # the in-process app behind the TestClient
    monkeypatch.setattr(common, "Controller", lambda cfg, _t: Controller(cfg, transport))
    monkeypatch.setattr(console, "width", 250)
    login = ["--url", "https://testserver", "--token", api.admin]
    out = CliRunner().invoke(cli_app, [*login, "rollouts", "show", str(rid)])
    assert out.exit_code == 0, out.output
    evidence = out.output.split("shadow evidence")[1]
    row = next(line for line in evidence.splitlines() if "detector" in line)
    assert "70.0%" in row and "200" in row and "0.2" in row and "failed" in row

    browser = Browser(api)
    user_with_password(api, "vera", "viewer")
    assert browser.login("vera").status_code == 303
    page = browser.get(f"/console/rollouts/{rid}")
    assert page.status_code == 200
    table = page.text.split('id="shadow-evidence"')[1].split("</table>")[0]
    assert "detector" in table and "70.0%" in table and "failed" in table
    assert "min_agreement 90.0%" in table


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    import numpy as np

    from edgefleet.drift.reference import compute
    from edgefleet.models.pack import read_signature
    from tests.support.onnxmodels import affine

    folder = tmp_path_factory.mktemp("shadow-drift")
    path = affine(folder / "affine.onnx", inputs=4, outputs=3)
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    np.savez(folder / "ref.npz", x=x)
    return path, compute(path, folder / "ref.npz", read_signature(path))


@pytest.mark.parametrize(("shift", "passes"), [(1.5, False), (0.0, True)])
def test_max_drift_reads_the_inputs_the_wave_saw_during_its_shadow_phase(
    fleet: ShadowFleet, reference: tuple[Path, Any], shift: float, passes: bool
) -> None:
    from tests.test_drift_fleet import known
    from tests.test_drift_fleet import window as drift_window

    drift = {"drift": {"window_seconds": 60}}
    fleet.api.profile(
        "vision", {**HOURLY, **drift, "models": [{"name": "detector", "reference": OLD}]}
    )  # revision 2, released: the devices run it now
    ids = fleet.enrol(2)
    fleet.hold(**drift, models=[{"name": "detector", "reference": NEW}])
    known(fleet.api, reference[1])
    # sketched beforehand (onnxruntime is slow on a busy machine): windows aligned on the
    # minute that ends at least 30 s after the shadow phase starts (an unaligned start one
    # second before a minute's end would put the sketch's rows in the next window)
    later = (int(time.time()) + 30) // 60 * 60
    windows = [
        drift_window(reference, shift, later, n=300, seed=seed) | {"model": "detector"}
        for seed in range(len(ids))
    ]
    rid = fleet.create_shadowed(
        waves="100%",
        on_failure="pause",
        shadow_seconds=5,
        gates={"min_agreement": 0.9, "max_drift": 0.25, "min_shadow_samples": 100},
    )["id"]
    fleet.wait(rid, lambda x: x["waves"][0]["state"] == "shadowing", "the shadow phase")
    for d, inputs in zip(ids, windows, strict=True):
        fleet.report(d, 2, drift=[inputs])
        fleet.agree(d, rid, compared=100, agree=100)
    done = fleet.wait(rid, lambda x: x["waves"][0]["shadow"] is not None, "the shadow gates")
    [model] = done["waves"][0]["shadow"]["models"]
    if passes:
        assert model["drift"]["psi"] < 0.1 and done["waves"][0]["state"] != "shadowing"
        assert done["state"] == "running"
    else:
        assert model["drift"]["psi"] > 0.25
        assert done["state"] == "paused" and "input drift PSI" in done["reason"]
        assert "max_drift 0.25" in done["reason"]


def test_a_rollout_shadow_takes_the_model_from_its_parent_comparison(fleet: ShadowFleet) -> None:
    parent = "registry.test:5000/models/detector-fp32@sha256:" + "f" * 64
    fleet.api.profile(
        "vision",
        {**HOURLY, "models": [{"name": "detector", "reference": OLD, "parent": parent}]},
    )  # revision 2, released: every device compares with the parent
    ids = fleet.enrol(1)
    [before] = fleet.state(ids[0])["shadow"]["models"]
    assert before["key"] == "parent" and before["model"]["reference"] == parent
    fleet.hold(models=[{"name": "detector", "reference": NEW, "parent": parent}])
    rid = fleet.create_shadowed(waves="100%", shadow_seconds=3600, shadow_window_seconds=60)["id"]
    fleet.wait(rid, lambda x: x["waves"][0]["state"] == "shadowing", "the shadow phase")
    plan = fleet.state(ids[0])["shadow"]
    assert [(m["key"], m["model"]["reference"]) for m in plan["models"]] == [
        (f"rollout-{rid}", NEW)
    ]
    assert plan["sample_rate"] == 1.0 and plan["window_seconds"] == 60
    fleet.api.ok("POST", f"/rollouts/{rid}/abort", fleet.api.admin, json={})
    [after] = fleet.state(ids[0])["shadow"]["models"]
    assert after["key"] == "parent"  # back to the parent comparison


def test_rollouts_plan_in_the_cli_shows_the_shadow_phase(
    fleet: ShadowFleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fleet.enrol(2)
    fleet.hold_new_model()
    api = fleet.api
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "absent.yaml"))
    transport = api.client._transport
    monkeypatch.setattr(common, "Controller", lambda cfg, _t: Controller(cfg, transport))
    monkeypatch.setattr(console, "width", 250)
    login = ["--url", "https://testserver", "--token", api.admin]
    args = ["rollouts", "plan", "--profile", "vision", "--shadow", "30m", "--min-agreement", "0.95"]
    out = CliRunner().invoke(cli_app, [*login, *args])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())
    assert "shadow phase: each wave's devices first run detector of the target in shadow" in said
    assert "min_agreement 0.95" in said
    bad = CliRunner().invoke(cli_app, [*login, "rollouts", "plan", "--profile", "vision",
                                       "--min-agreement", "0.95"])  # fmt: skip
    assert bad.exit_code != 0 and "set shadow_seconds above 0" in " ".join(bad.output.split())


def test_the_console_plans_a_shadow_phase(fleet: ShadowFleet) -> None:
    fleet.enrol(2)
    fleet.hold_new_model()
    browser = Browser(fleet.api)
    user_with_password(fleet.api, "vera", "viewer")
    assert browser.login("vera").status_code == 303
    query = "profile=vision&waves=1,100%25&shadow_minutes=10&min_agreement_percent=95"
    page = browser.get(f"/console/rollouts/plan?{query}")
    assert page.status_code == 200
    line = page.text.split('id="plan-shadow"')[1].split("</p>")[0]
    assert "detector" in line and "min_agreement 0.95," in line
    bad = browser.get("/console/rollouts/plan?profile=vision&min_agreement_percent=95")
    assert "set shadow_seconds above 0" in bad.text
