"""Enrolment as a device depends on it: one key, one device, whatever the network does."""

from __future__ import annotations

import json
import logging
import stat
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgefleet.agent.daemon import Agent, Rejected
from edgefleet.agent.state import Phase
from edgefleet.signing import spki_pin
from edgefleet.wire import Registration
from tests.agent.conftest import fast_settings, wait_until
from tests.agent.fakecontroller import FakeController


def _key_pin(state_dir: Path) -> str:
    key = serialization.load_pem_private_key((state_dir / "key.pem").read_bytes(), None)
    return spki_pin(key.public_key())


def test_once_enrols_and_stores_identity_with_a_private_key(fake, state_dir, run_agent):
    agent = run_agent(once=True)
    agent.join()
    assert agent.result == 0, agent.error
    key_mode = stat.S_IMODE((state_dir / "key.pem").stat().st_mode)
    assert key_mode == 0o600
    device = json.loads((state_dir / "device.json").read_text())
    state = json.loads((state_dir / "state.json").read_text())
    assert device["device_id"] == state["device_id"]
    assert state["phase"] == "ready"
    assert (state_dir / "device.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert fake.count("POST", "/enrol") == 1


def test_enrolled_agent_does_not_enrol_again_after_restart(fake, state_dir, run_agent):
    run_agent(once=True).join()
    pin_before = _key_pin(state_dir)
    second = run_agent(once=True)
    second.join()
    assert second.result == 0
    assert fake.count("POST", "/enrol") == 1
    assert _key_pin(state_dir) == pin_before
    assert fake.count("POST", "/auth/token") == 2


def test_key_is_written_before_the_first_enrol_request_and_reused_when_controller_comes_up(
    unstarted_fake, state_dir, run_agent
):
    agent = run_agent(controller=unstarted_fake)
    wait_until(lambda: agent.state.last_error, what="a failed attempt")
    assert (state_dir / "key.pem").exists()
    assert not (state_dir / "device.json").exists()
    pin = _key_pin(state_dir)
    time.sleep(0.4)  # several more refused attempts
    unstarted_fake.start()
    wait_until(lambda: agent.state.phase == Phase.ready, what="enrolment after controller start")
    assert agent.state.device_id == "dev-" + pin[7:19]
    assert unstarted_fake.count("POST", "/enrol") == 1


def test_awaiting_approval_polls_with_the_same_key_until_approved(fake, state_dir, run_agent):
    fake.polls_before_approval = 2
    fake.approval_retry_after = 1
    started = time.monotonic()
    agent = run_agent(once=True)
    agent.join(timeout=8)
    assert agent.result == 0
    enrols = [r for r in fake.requests if r.path.endswith("/enrol")]
    assert len(enrols) == 3
    assert len(fake.devices) == 1  # same key every time, so one device
    assert time.monotonic() - started >= 1.8  # retry_after_seconds honoured twice (-10% jitter)
    assert json.loads((state_dir / "state.json").read_text())["phase"] == "ready"


def test_rejected_enrolment_stops_the_agent(fake, state_dir):
    fake.reject = True
    agent = Agent(fast_settings(state_dir), Registration.model_validate(fake.registration()))
    with pytest.raises(Rejected, match="rejected"):
        agent.run()
    assert json.loads((state_dir / "state.json").read_text())["phase"] == "rejected"


def test_bad_token_keeps_asking_slowly_and_enrols_once_an_operator_fixes_it(
    fake, state_dir, run_agent, caplog
):
    caplog.set_level(logging.INFO, logger="edgefleet.agent")
    fake.valid_tokens = set()
    agent = run_agent()
    wait_until(lambda: fake.count("POST", "/enrol") >= 3, what="three refused enrolments")
    assert agent.error is None
    assert "registration token is not valid" in caplog.text
    assert "invalid_token" in (agent.state.last_error or "")
    fake.valid_tokens = {"good-token"}
    wait_until(lambda: agent.state.phase == Phase.ready, what="enrolment after the fix")


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_on_enrol_is_honoured(fake: FakeController, run_agent, form):
    until = int(time.time()) + 2  # an HTTP-date has one-second resolution
    value = "1" if form == "seconds" else formatdate(until, usegmt=True)
    fake.fail_next("POST", "/enrol", 503, code="busy", headers={"Retry-After": value})
    agent = run_agent(once=True)
    agent.join(timeout=8)
    assert agent.result == 0
    first, second = [r.at for r in fake.requests if r.path.endswith("/enrol")]
    not_before = first + 1 if form == "seconds" else until
    assert second >= not_before - 0.05


def test_status_429_retry_after_is_honoured(fake: FakeController, run_agent):
    fake.fail_next("POST", "/devices/", 429, code="slow_down", headers={"Retry-After": "1"})
    agent = run_agent(once=True)
    agent.join(timeout=8)
    assert agent.result == 0
    first, second = [r.at for r in fake.requests if r.path.endswith("/status")]
    assert second - first >= 1.0
