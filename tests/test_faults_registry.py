"""The registry down during a rollout (issue 13): docker-registry (token mode, trusting
only the controller) is stopped as the canary wave starts, so the canary's pull meets
the outage, and started again some seconds later.

What an operator relies on: a registry outage is not the revision's fault, so the
canary does not report a failed update (which would fail the gate and roll a good
revision back); it says it waits for its registry, tries again at every check (the
blobs it already has stay in its store), and the rollout waits with it, bounded by its
``--update-timeout`` like any device that gives no outcome. Registry back: the rollout
completes with nothing failed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import Fleet, summary
from tests.support.processes import wait_for

WAITS = "waits for its registry"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(tmp_path / "fleet", 4)
    try:
        yield started.start()
    finally:
        started.close()


def _rollout_with_the_registry_down(fleet: Fleet, update_timeout: int) -> tuple[int, float]:
    fleet.push(2, "2")
    target = int(fleet.apply({"version": "2"}, hold=True)["revision"])
    fleet.settled()
    assert fleet.registry is not None
    created = fleet.create_rollout(
        revision=target,
        waves="1,100%",
        bake_seconds=1,
        gates={"max_failures": 0},
        seed="registry",
        update_timeout_seconds=update_timeout,
    )
    fleet.registry.stop()  # before the canary's next check: its pull meets the outage
    return created["id"], time.monotonic()


def test_a_rollout_waits_for_its_registry_and_completes_when_it_is_back(
    fleet: Fleet,
) -> None:
    rid, down = _rollout_with_the_registry_down(fleet, update_timeout=120)
    fleet.wait_wave(rid, 1, ("updating",), timeout=30)
    (moved,) = fleet.get(f"/rollouts/{rid}/devices", wave=1)
    canary = next(d for d in fleet.devices if d.id == moved["device"])
    wait_for(lambda: WAITS in canary.log.read_text(), 30, "the canary to meet the outage")
    time.sleep(5)  # several of the canary's checks (1 s apart) meet it too
    during = fleet.rollout(rid)
    print(f"registry down {time.monotonic() - down:.1f}s: {summary(during)}")
    assert during["state"] == "running", summary(during)
    assert during["waves"][0]["state"] == "updating", summary(during)
    assert during["counts"]["failed"] == 0, summary(during)
    assert canary.log.read_text().count(WAITS) >= 3, "the canary stopped trying"
    assert fleet.updates(during["revision"]) == [], "an outage was reported as an update"
    assert fleet.registry is not None
    fleet.registry.start()
    up = time.monotonic()
    final = fleet.wait_rollout(rid, "completed", timeout=120)
    print(f"completed {time.monotonic() - up:.1f}s after the registry came back")
    assert final["counts"]["succeeded"] == 4 and final["counts"]["failed"] == 0, summary(final)
    fleet.wait_serving(final["revision"])
    fleet.check_answers("2")


def test_an_outage_longer_than_the_update_timeout_fails_the_wave(fleet: Fleet) -> None:
    """The wait is bounded: past ``--update-timeout`` the canary counts as failed (no
    outcome), the gate fails and the rollout is rolled back, as for a silent device."""
    rid, _ = _rollout_with_the_registry_down(fleet, update_timeout=6)
    final = fleet.wait_rollout(rid, "rolled_back", timeout=60)
    print(summary(final))
    assert final["counts"]["failed"] == 1, summary(final)
    (canary,) = fleet.get(f"/rollouts/{rid}/devices", wave=1)
    assert canary["state"] == "failed" and "no outcome within" in canary["reason"], canary
    assert fleet.updates(final["revision"]) == [], "an outage was reported as an update"
