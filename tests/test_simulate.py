"""``edgefleet simulate`` against a real controller process over HTTPS: the fleet it
enrols is exactly what the controller lists, the devices that report are seen, the
offline ones are not, uploads and rolled-back updates land, the report and the chart
are sound; bad input ends with exit 2 and a message; a controller that dies mid-run
turns into errors by kind and exit 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edgefleet.simulate.behaviours import assign
from edgefleet.simulate.config import Mix
from tests.support.processes import EDGEFLEET, ControllerProcess, wait_for

DEVICES = 40
ENDPOINTS = (
    "POST /enrol",
    "POST /auth/token",
    "GET desired",
    "POST status",
    "POST results",
    "POST updates",
)


def _env(ctl: ControllerProcess, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(EDGEFLEET_URL=ctl.url, EDGEFLEET_TOKEN=ctl.admin_token, EDGEFLEET_CA_FILE=ctl.ca)
    env["EDGEFLEET_CLI_CONFIG"] = "/nonexistent/cli.yaml"
    env.update(extra)
    return env


def _simulate(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EDGEFLEET, "simulate", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _devices(ctl: ControllerProcess, site: str) -> list[dict[str, Any]]:
    with ctl.client() as c:
        r = c.get("/devices", params={"site": site, "limit": 10000})
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("sim") / "data"
    data.mkdir()
    ctl = ControllerProcess(data, workers=1).start()
    yield ctl
    ctl.close()


def test_a_simulated_fleet_is_what_the_controller_sees(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    ctl = controller
    with ctl.client() as c:
        c.post("/profiles", json={"name": "sim-p", "spec": {"config": {"n": 1}}}).raise_for_status()
    report, chart = tmp_path / "report.json", tmp_path / "chart.png"
    proc = _simulate(
        _env(ctl),
        *("--devices", str(DEVICES), "--interval", "1", "--duration", "8"),
        *("--site", "sim-a", "--profile", "sim-p", "--seed", "7"),
        *("--offline", "0.1", "--flapping", "0.1", "--slow", "0.1"),
        *("--uploading", "0.2", "--failing-updates", "0.1", "--slow-delay", "0.3"),
        *("--controller-pid", str(ctl.proc.pid), "--report", str(report), "--chart", str(chart)),
        *("--bucket", "1", "--warmup", "3"),
    )
    # Once the fleet is in, a new revision: the failing devices roll it back and say so.
    wait_for(lambda: len(_devices(ctl, "sim-a")) == DEVICES, 30, "the fleet to enrol")
    time.sleep(2)
    with ctl.client() as c:
        c.post("/profiles", json={"name": "sim-p", "spec": {"config": {"n": 2}}}).raise_for_status()
    out, err = proc.communicate(timeout=45)
    assert proc.returncode == 0, out + err
    assert "GET desired" in out and "errors: none" in out

    doc = json.loads(report.read_text())
    assert doc["error_count"] == 0, doc["first_errors"]
    assert doc["devices"]["enrolled"] == DEVICES
    assert doc["devices"]["by_behaviour"] == {
        "failing_updates": 4,
        "flapping": 4,
        "offline": 4,
        "plain": 16,
        "slow": 4,
        "uploading": 8,
    }
    for name in ENDPOINTS:
        e = doc["endpoints"][name]
        assert e["requests"] > 0 and e["errors"] == 0, name
        assert 0 < e["p50_ms"] <= e["p95_ms"] <= e["p99_ms"] <= e["max_ms"], name
    assert doc["series"] and doc["requests_per_second"] > 0
    # The steady state is what a soak is judged by: from --warmup after enrolment on.
    steady = doc["steady"]
    assert steady["warmup_s"] == 3
    assert steady["from_s"] >= doc["enrol_seconds"] + 3 and steady["to_s"] > steady["from_s"]
    assert steady["requests"] > 0 and steady["errors"] == 0
    assert 0 < steady["p50_ms"] <= steady["p99_ms"] and steady["per_second"] > 0
    assert steady["controller"]["rss_end_mb"] > 10 and "steady state (" in out
    assert doc["controller"]["rss_end_mb"] > 10
    assert doc["simulator_cpu_seconds"] > 0

    listed = {d["id"]: d for d in _devices(ctl, "sim-a")}
    ours = {d["id"]: d for d in doc["device_list"]}
    assert set(listed) == set(ours)
    end = datetime.now(UTC).timestamp()
    for device_id, mine in ours.items():
        seen = listed[device_id]["last_seen_at"]
        if mine["behaviour"] == "offline":
            assert seen is None and mine["reports"] == 0, device_id
        elif mine["behaviour"] != "flapping":
            assert seen is not None, device_id
            assert end - datetime.fromisoformat(seen).timestamp() < 15, (device_id, seen)

    with ctl.client() as c:
        for mine in ours.values():
            if mine["behaviour"] == "uploading":
                rows = c.get("/results", params={"device": mine["id"], "limit": 1000}).json()
                assert mine["results_acked"] > 0
                assert len(rows["results"]) == mine["results_acked"], mine["id"]
            if mine["behaviour"] == "failing_updates":
                updates = c.get("/updates", params={"device": mine["id"]}).json()
                assert [u["outcome"] for u in updates] == ["rolled_back"], mine["id"]
                assert listed[mine["id"]]["applied_revision"] == 1
            elif mine["behaviour"] in ("plain", "uploading"):
                assert listed[mine["id"]]["applied_revision"] == 2, mine["id"]

    with Image.open(chart) as img:
        img.load()
        assert img.format == "PNG" and img.size == (1000, 640)


def test_behaviours_are_exact_counts_and_the_same_for_the_same_seed() -> None:
    mix = Mix(offline=0.1, flapping=0.25, uploading=0.5)
    kinds = assign(20, mix, seed=3)
    assert Counter(kinds) == {"offline": 2, "flapping": 5, "uploading": 10, "plain": 3}
    assert assign(20, mix, seed=3) == kinds
    assert assign(20, mix, seed=4) != kinds


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--devices", "0"], {}, "--devices must be at least 1"),
        (["--devices", "5", "--offline", "0.6", "--slow", "0.6"], {}, "add up to 1.2"),
        (["--devices", "5", "--uploading", "1.5"], {}, "--uploading is a fraction"),
        (["--devices", "5"], {"EDGEFLEET_TOKEN": "efo.bogus"}, "refused the operator token"),
        (["--devices", "5", "--profile", "nope"], {}, "--profile 'nope'"),
        (["--devices", "5", "--url", "https://127.0.0.1:{port}"], {}, "cannot reach"),
        (["--devices", "5", "--outage-at", "0.5"], {}, "raise --duration"),
        (["--devices", "5", "--outage-at", "0", "--outage-for", "0"], {}, "--outage-for must"),
        (["--devices", "5", "--warmup", "5"], {}, "--warmup is seconds after enrolment"),
    ],
    ids=[
        "no-devices",
        "fractions",
        "fraction",
        "bad-token",
        "no-profile",
        "unreachable",
        "back-after-the-end",
        "no-outage",
        "warmup-past-the-end",
    ],
)
def test_bad_input_exits_2_with_a_message_and_creates_nothing(
    controller: ControllerProcess, args: list[str], env: dict[str, str], message: str
) -> None:
    with controller.client() as c:
        tokens_before = len(c.get("/tokens").json())
    args = [a.replace("{port}", str(_refused_port())) for a in args]
    proc = _simulate(_env(controller, **env), *args, "--site", "sim-bad", "--duration", "1")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, out + err
    assert message in " ".join(err.split()), err
    with controller.client() as c:
        assert len(c.get("/tokens").json()) == tokens_before
        assert "sim-bad" not in {s["name"] for s in c.get("/sites").json()}


def test_shed_load_is_retried_and_a_controller_stopped_mid_run_is_counted_by_kind(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # Enrolments beyond a burst of 3 are refused 429 with Retry-After: shed, not errors.
    ctl = ControllerProcess(data, workers=1, enrol_rate_per_second=4, enrol_burst=3).start()
    try:
        report = tmp_path / "report.json"
        proc = _simulate(
            _env(ctl),
            *("--devices", "10", "--interval", "0.5", "--duration", "5", "--timeout", "2"),
            *("--site", "sim-kill", "--report", str(report)),
        )
        wait_for(lambda: len(_devices(ctl, "sim-kill")) == 10, 30, "the fleet to enrol")
        time.sleep(1)
        ctl.kill()
        out, err = proc.communicate(timeout=45)
    finally:
        ctl.close()
    assert proc.returncode == 1, out + err
    doc = json.loads(report.read_text())
    assert doc["error_count"] > 0
    assert set(doc["errors"]) <= {"connection", "timeout"} and doc["errors"], doc["errors"]
    assert doc["endpoints"]["GET desired"]["requests"] > 0  # it ran before the kill
    enrol = doc["endpoints"]["POST /enrol"]
    assert enrol["requests"] == 10 and enrol["shed"] > 0 and enrol["errors"] == 0
    assert "errors" in out and "first" in out


if sys.platform != "linux":  # /proc is how the controller's CPU and RSS are read
    pytestmark = pytest.mark.skip(reason="the simulator reads the controller's figures from /proc")
