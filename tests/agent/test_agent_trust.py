"""Pinning: the agent talks only to a controller whose root it was flashed to trust."""

from __future__ import annotations

import time

from edgefleet.agent.state import Phase
from tests.agent.conftest import wait_until
from tests.agent.fakecontroller import FakeController
from tests.agent.pki import TestPKI


def test_server_whose_chain_matches_no_pin_is_refused_and_sent_nothing_else(
    fake: FakeController, state_dir, run_agent
):
    other = TestPKI("other")
    agent = run_agent(registration=fake.registration(pins=[other.pin]))
    wait_until(lambda: fake.count("GET", "/pki/chain") >= 3, what="repeated chain fetches")
    agent.stop()
    assert agent.error is None  # refused and retried, never crashed
    assert set(fake.paths()) == {"/api/v1/pki/chain"}
    assert not (state_dir / "trust.pem").exists()
    assert "pinned roots" in (agent.state.last_error or "")


def test_pinned_root_is_stored_and_reused_without_fetching_the_chain_again(
    fake: FakeController, state_dir, run_agent
):
    run_agent(once=True).join()
    assert (state_dir / "trust.pem").read_text() == fake.pki.root.pem
    run_agent(once=True).join()
    assert fake.count("GET", "/pki/chain") == 1


def test_a_backup_pin_is_enough(fake: FakeController, run_agent):
    pins = [TestPKI("backup").pin, fake.pki.pin]
    agent = run_agent(registration=fake.registration(pins=pins), once=True)
    agent.join()
    assert agent.result == 0


def test_stored_trust_that_matches_no_pin_is_set_aside_and_fetched_again(
    fake: FakeController, state_dir, run_agent
):
    state_dir.mkdir()
    (state_dir / "trust.pem").write_text(TestPKI("stale").root.pem)
    agent = run_agent(once=True)
    agent.join()
    assert agent.result == 0
    assert (state_dir / "trust.pem.rejected").exists()
    assert fake.count("GET", "/pki/chain") == 1


def test_impostor_with_another_ca_on_the_same_address_gets_no_credentials(
    tmp_path, fake: FakeController, state_dir, run_agent
):
    run_agent(once=True).join()
    port = fake.port
    fake.stop()
    impostor = FakeController(tmp_path, TestPKI("impostor"), port=port).start()
    try:
        agent = run_agent(controller=impostor, registration=fake.registration())
        wait_until(lambda: impostor.count("GET", "/pki/chain") >= 2, what="chain re-fetches")
        agent.stop()
        assert set(impostor.paths()) == {"/api/v1/pki/chain"}
        assert agent.error is None
    finally:
        impostor.stop()


def test_assertions_are_signed_with_the_controllers_time(fake: FakeController, run_agent):
    fake.date_offset = 90 * 60  # the controller's clock is 90 minutes ahead of ours
    agent = run_agent(once=True)
    agent.join()
    assert agent.result == 0
    claims = fake.assertions[0]
    assert abs(claims["iat"] - claims["_server_now"]) < 5
    assert claims["exp"] > claims["iat"]
    assert abs(claims["iat"] - time.time()) > 80 * 60


def test_assertion_names_the_device_and_the_controller(fake: FakeController, run_agent):
    agent = run_agent(once=True)
    agent.join()
    claims = fake.assertions[0]
    assert claims["sub"] == claims["iss"] == agent.state.device_id
    assert claims["aud"] == fake.controller_id
    assert agent.state.phase == Phase.ready
