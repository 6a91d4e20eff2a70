"""Following the desired state: fetch on change, apply, report, keep the token fresh."""

from __future__ import annotations

import json

import pytest

from edgefleet.agent.daemon import Agent, Decommissioned
from edgefleet.agent.state import Phase
from edgefleet.wire import Registration
from tests.agent.conftest import fast_settings, wait_until
from tests.agent.fakecontroller import FakeController


def _statuses(fake: FakeController):
    return [s for d in fake.devices.values() for s in d.statuses]


def test_new_desired_state_is_fetched_at_once_when_the_ack_says_so(
    fake: FakeController, state_dir, run_agent
):
    fake.interval_seconds = 1
    agent = run_agent()
    wait_until(lambda: agent.state.phase == Phase.ready, what="ready")
    etag = fake.set_desired(agent.state.device_id, revision=7, profile="cameras")
    wait_until(lambda: agent.state.applied_revision == 7, timeout=4, what="revision 7 applied")
    assert agent.state.desired_etag == etag
    desired = json.loads((state_dir / "desired.json").read_text())
    assert desired["revision"] == 7 and desired["profile"] == "cameras"
    wait_until(lambda: _statuses(fake)[-1].applied_revision == 7, what="status with revision 7")
    # The GET came right after the status whose ack carried the new ETag, and the
    # status after it reports the new revision in the same cycle.
    paths = [p.rsplit("/", 1)[-1] for p in fake.paths() if "/devices/" in p]
    i = paths.index("desired", 1)
    assert paths[i - 1 : i + 2] == ["status", "desired", "status"]


def test_unchanged_desired_state_is_not_downloaded_again_after_restart(
    fake: FakeController, state_dir, run_agent
):
    run_agent(once=True).join()
    mtime = (state_dir / "desired.json").stat().st_mtime_ns
    run_agent(once=True).join()
    second_get = [r for r in fake.requests if r.path.endswith("/desired")][1]
    assert second_get.headers.get("If-None-Match")
    assert (state_dir / "desired.json").stat().st_mtime_ns == mtime


def test_inventory_is_reported_once_then_only_heartbeats(fake: FakeController, run_agent):
    fake.interval_seconds = 1
    agent = run_agent()
    wait_until(lambda: len(_statuses(fake)) >= 2, timeout=4, what="two heartbeats")
    first, second = _statuses(fake)[:2]
    assert first.inventory is not None and first.inventory.serial == "SN-TEST-1"
    assert first.inventory.hardware_id == "hw-test-1"
    assert second.inventory is None
    assert agent.error is None


def test_access_token_is_renewed_after_a_401_without_backoff(fake: FakeController, run_agent):
    fake.interval_seconds = 1
    agent = run_agent()
    wait_until(lambda: agent.state.phase == Phase.ready, what="ready")
    fake.revoke_tokens()
    n = len(_statuses(fake))
    wait_until(lambda: len(_statuses(fake)) > n, timeout=4, what="a status after the revoke")
    assert fake.count("POST", "/auth/token") == 2
    assert agent.state.last_error is None


def test_access_token_is_renewed_before_it_expires(fake: FakeController, run_agent):
    fake.interval_seconds = 1
    fake.token_ttl = 2  # renewed at 80%: 1.6 s
    agent = run_agent()
    wait_until(lambda: fake.count("POST", "/auth/token") >= 2, timeout=5, what="a renewal")
    assert agent.state.last_error is None


def test_decommissioned_device_stops_with_an_operator_message(fake: FakeController, state_dir):
    agent = Agent(
        fast_settings(state_dir, once=True), Registration.model_validate(fake.registration())
    )
    assert agent.run() == 0
    fake.decommission(agent.store.current.device_id)
    again = Agent(fast_settings(state_dir), Registration.model_validate(fake.registration()))
    with pytest.raises(Decommissioned, match="delete the state folder"):
        again.run()
    assert json.loads((state_dir / "state.json").read_text())["phase"] == "decommissioned"
