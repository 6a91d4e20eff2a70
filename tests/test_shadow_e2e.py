"""Shadow waves end to end, every part real: a controller over HTTPS (SQLite, and
PostgreSQL for the agreeing rollout), docker-registry trusting it, agents in direct mode
serving a tiny ONNX model through their A/B slots, and an application on each device
calling its runner the whole time.

What an operator relies on: a rollout with a shadow phase runs the candidate beside the
active model on the devices' live inputs while the active model alone answers; a
candidate that disagrees with the active model beyond the gate stops the rollout before
any device is moved to it (the evidence and the reason are kept with the rollout, and
the shadow ends); one that agrees is activated and the rollout completes, its evidence
kept too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.support.fleet import MODEL, SITE, Device, Fleet
from tests.support.processes import wait_for

WINDOW = 2
"""Seconds per agreement window: the shadow phase lasts several."""
SHADOW = 20
"""Long enough for several windows to close and reach the controller: the agent reports
a window about 10 s after its end, with its next status report."""
MIN_SAMPLES = 200
GATE = 0.95


def shadow_spec(**extra: Any) -> dict[str, Any]:
    return {
        "waves": "100%",
        "bake_seconds": 1,
        "shadow_seconds": SHADOW,
        "shadow_window_seconds": WINDOW,
        "shadow_sample_rate": 1.0,
        "gates": {"min_agreement": GATE, "min_shadow_samples": MIN_SAMPLES},
        **extra,
    }


class Traffic:
    """An application on each device: calls of 20 rows to its runner, about 10 a second,
    until stopped; counts the calls that failed (there should be none: the active model
    answers throughout, the shadow's switches included)."""

    def __init__(self, devices: list[Device]) -> None:
        self.stop = threading.Event()
        self.calls = 0
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._feed, args=(d, n), daemon=True)
            for n, d in enumerate(devices)
        ]

    def _feed(self, device: Device, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            try:
                device.predict(rng.normal(size=(20, 4)).astype(np.float32).tolist())
                self.calls += 1
            except Exception as exc:  # noted, and the test fails on it
                self.failures.append(f"{device.serial}: {type(exc).__name__}: {exc}")
            self.stop.wait(0.1)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


@pytest.fixture
def fleet_of(tmp_path: Path) -> Iterator[Any]:
    started: list[Fleet] = []

    def make(size: int, **kw: Any) -> Fleet:
        fleet = Fleet(tmp_path / f"fleet-{len(started)}", size, **kw)
        started.append(fleet)
        return fleet.start()

    yield make
    for fleet in started:
        fleet.close()


def settled(read: Any) -> Any:
    """A ``wait_for`` condition: ``read()`` once it gave the same answer twice, 3 s apart."""
    last: list[Any] = [None]

    def check() -> Any:
        time.sleep(3)
        now = read()
        same = now is not None and now == last[0]
        last[0] = now
        return now if same else None

    return check


def actions(rollout: dict[str, Any]) -> list[str]:
    return [e["action"] for e in rollout["events"]]


def windows_of(fleet: Fleet, key: str) -> list[dict[str, Any]]:
    return fleet.get("/drift/agreement", by="device", key=key)["groups"]


def compared(fleet: Fleet, key: str) -> int:
    return sum(g["compared"] for g in windows_of(fleet, key))


def test_a_disagreeing_candidate_stops_the_rollout_before_activation(
    fleet_of: Any, tmp_path: Path
) -> None:
    fleet = fleet_of(2)
    fleet.push(7, "3")  # other weights: top-1 differs on a good share of the inputs
    target = int(fleet.apply({"version": "3"}, hold=True)["revision"])
    fleet.settled()
    with Traffic(fleet.devices) as traffic:
        rollout = fleet.create_rollout(**shadow_spec(on_failure="rollback"))
        key = f"rollout-{rollout['id']}"
        fleet.wait_wave(rollout["id"], 1, ("shadowing",), timeout=20)
        # During the phase the active model alone answers: the callers see revision 1.
        wait_for(lambda: compared(fleet, key) > 0, 30, "the first agreement windows")
        fleet.check_answers("1")
        done = fleet.wait_rollout(rollout["id"], "rolled_back", timeout=SHADOW + 60)
        stopped_at = time.time()
    assert traffic.calls > 50 and traffic.failures == [], traffic.failures

    wave = done["waves"][0]
    evidence = wave["shadow"]
    assert evidence["verdict"]["ok"] is False, evidence
    (model,) = evidence["models"]
    assert model["compared"] >= MIN_SAMPLES and model["devices"] == 2, model
    assert model["agreement"] < GATE, model
    assert "top-1 agreement" in done["reason"] and "min_agreement" in done["reason"]
    assert "devices_moved" not in actions(done), actions(done)
    assert {"shadow_started", "gate_failed", "rolled_back"} <= set(actions(done))

    # Nobody was moved: no update to the target, every device on revision 1, answering
    # from model 1, its desired state pinned nowhere new.
    assert fleet.updates(target) == []
    for device in fleet.devices:
        assert device.applied() == 1 and fleet.desired_revision(device.id) != target
    fleet.check_answers("1")

    # The shadow ended with the phase: no window starts later than the agents' next
    # look at their desired state (a second here) and the window they were in. Windows
    # closed before reach the controller up to about 10 s after their end.
    with Traffic(fleet.devices):
        time.sleep(3 * WINDOW + 12)
    last = max(g["last_start"] for g in windows_of(fleet, key))
    assert last <= stopped_at + 2 + WINDOW, (last - stopped_at, "the candidate still ran")

    shown = fleet.cli("rollouts", "show", str(done["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "agreement" in shown.stdout.lower() and f"{model['agreement']:.1%}" in shown.stdout


def test_an_agreeing_candidate_is_activated_and_the_rollout_completes(
    fleet_of: Any, postgres_url: str
) -> None:
    fleet = fleet_of(2, database_url=postgres_url)
    fleet.push(1, "2")  # the same weights under another version: a new digest that agrees
    target = int(fleet.apply({"version": "2"}, hold=True)["revision"])
    fleet.settled()
    with Traffic(fleet.devices) as traffic:  # until the candidate is activated
        rollout = fleet.create_rollout(**shadow_spec())
        fleet.wait_wave(rollout["id"], 1, ("shadowing",), timeout=20)
        fleet.wait_wave(rollout["id"], 1, ("updating", "baking", "passed"), timeout=SHADOW + 60)
    assert traffic.calls > 50 and traffic.failures == [], traffic.failures
    done = fleet.wait_rollout(rollout["id"], "completed", timeout=90)

    evidence = done["waves"][0]["shadow"]
    assert evidence["verdict"]["ok"] is True, evidence
    (model,) = evidence["models"]
    assert model["compared"] >= MIN_SAMPLES and model["devices"] == 2, model
    assert model["agreement"] == 1.0 and model["mad"] == 0.0, model
    order = [a for a in actions(done) if a in ("shadow_started", "shadow_passed", "devices_moved")]
    assert order == ["shadow_started", "shadow_passed", "devices_moved"], actions(done)
    fleet.wait_serving(target, timeout=60)
    fleet.check_answers("2")
    assert [u["outcome"] for u in fleet.updates(target)] == ["committed", "committed"]


def test_an_int8_model_is_compared_with_its_parent_on_live_site_data(
    fleet_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's path: ``models push --quantize int8`` prints the profile entry
    that names the full-precision parent; devices running the INT8 model then run the
    parent in shadow, and the agreement shows per site in the API, the CLI and the
    console."""
    fleet = fleet_of(2)
    assert fleet.registry is not None
    pushed = fleet.cli(
        "models", "push", str(fleet.model_files["1"]), "--name", MODEL, "--version", "5",
        "--quantize", "int8", "--registry", fleet.registry.host, "--plain-http",
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    snippet = pushed.stdout[pushed.stdout.index("models:") :]
    models = yaml.safe_load(snippet)["models"]
    assert models[0]["reference"].split("@")[0].endswith(":5-int8"), models
    assert models[0]["parent"].split("@")[0].endswith(":5"), models
    spec = fleet.spec("5", shadow={"sample_rate": 1.0, "window_seconds": WINDOW})
    target = int(fleet.apply({**spec, "models": models})["revision"])
    fleet.wait_serving(target, timeout=90)

    def parent_figures() -> dict[str, Any] | None:
        groups = fleet.get("/drift/agreement", by="site", key="parent")["groups"]
        ready = groups and groups[0]["compared"] >= MIN_SAMPLES and groups[0]["devices"] == 2
        return groups[0] if ready else None

    with Traffic(fleet.devices) as traffic:
        wait_for(parent_figures, 120, "both devices' INT8-vs-parent windows")
    assert traffic.failures == [], traffic.failures
    # Windows closed before the traffic stopped arrive up to about 10 s after their end:
    # once they have, the API, the CLI and the console show the same figures.
    found = wait_for(settled(parent_figures), 60, "the last windows to arrive")
    assert found["site"] == SITE and found["model"] == MODEL and found["devices"] == 2
    # INT8 answers a little differently from the full-precision model, rarely in its class.
    assert 0 < found["mad"] < 0.5 and 0.8 <= found["agreement"] <= 1.0, found
    assert found["active_p95_ms"] is not None and found["candidate_p95_ms"] is not None

    monkeypatch.setenv("COLUMNS", "200")
    shown = fleet.cli("drift", "agreement", "--key", "parent")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if SITE in line)
    assert f"{found['agreement']:.1%}" in row, shown.stdout
    page = fleet.console_page("/console/drift")
    table = page.split('id="parent-agreement"')[1].split("</section>")[0]
    assert SITE in table and f"{found['agreement'] * 100:.1f}%" in table
