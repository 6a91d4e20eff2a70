"""Renewal with real processes (PostgreSQL): an agent renews at two thirds of its
certificate's lifetime with a new key, and one whose certificate expired while it was
offline re-enrols by proving its key, keeping its device id."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.processes import AgentProcess, ControllerProcess, wait_for


def _cert_serial(agent: AgentProcess) -> int:
    try:
        return x509.load_pem_x509_certificates((agent.state_dir / "device.pem").read_bytes())[
            0
        ].serial_number
    except (FileNotFoundError, ValueError):
        return 0


def _audit(ctl: ControllerProcess, action: str, device_id: str) -> bool:
    with ctl.client() as c:
        return any(
            a["action"] == action and a["target"] == device_id for a in c.get("/audit").json()
        )


@pytest.mark.usefixtures("postgres_available")
def test_agent_renews_and_re_enrols_after_expiry(tmp_path: Path, postgres_url: str) -> None:
    ctl = ControllerProcess(
        tmp_path / "ctl",
        database_url=postgres_url,
        device_interval_seconds=1,
        device_cert_lifetime=20,
        workers=1,
    ).start()
    agent = None
    try:
        reg = ctl.registration(tmp_path / "registration.yaml")
        agent = AgentProcess(reg, tmp_path / "agent", "SN-RENEW")
        wait_for(lambda: agent.state().get("phase") == "ready", 60, "the agent ready")
        device_id = agent.state()["device_id"]
        first_key = (agent.state_dir / "key.pem").read_bytes()
        first_serial = _cert_serial(agent)
        # two thirds of 20 s: the agent renews about 13 s after enrolment (a loaded CI
        # machine must not let the certificate expire before the renewal is due)
        wait_for(lambda: _audit(ctl, "device.renew", device_id), 60, "a renewal")
        # The certificate is stored first, then the new key promoted over key.pem: wait
        # for both (a loaded machine once read the files between the two steps).
        wait_for(
            lambda: (
                _cert_serial(agent) != first_serial
                and not (agent.state_dir / "key.next.pem").exists()
            ),
            10,
            "the new certificate stored and its key promoted",
        )
        assert (agent.state_dir / "key.pem").read_bytes() != first_key
        assert agent.proc.poll() is None and agent.state()["device_id"] == device_id

        agent.stop()
        time.sleep(21)  # the certificate expires while the device is off
        agent = AgentProcess(reg, tmp_path / "agent", "SN-RENEW")
        wait_for(lambda: _audit(ctl, "device.reenrol", device_id), 60, "a re-enrolment")
        with ctl.client() as c:
            devices = c.get("/devices").json()
        assert [d["id"] for d in devices] == [device_id]
        seen = devices[0]["last_seen_at"]
        wait_for(
            lambda: ctl.client().get(f"/devices/{device_id}").json()["last_seen_at"] != seen,
            30,
            "reports after re-enrolment",
        )
    finally:
        if agent is not None:
            agent.stop()
        ctl.close()


def test_device_that_lost_its_key_returns_as_itself_after_approval(tmp_path: Path) -> None:
    """SQLite. The state folder is wiped (new key, same hardware): an operator approves
    the new key and the agent carries on as the same device."""
    import shutil

    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1, workers=1).start()
    agent = None
    try:
        reg = ctl.registration(tmp_path / "registration.yaml")
        agent = AgentProcess(reg, tmp_path / "agent", "SN-WIPED")
        wait_for(lambda: agent.state().get("phase") == "ready", 60, "the agent ready")
        device_id = agent.state()["device_id"]
        agent.stop()
        shutil.rmtree(tmp_path / "agent")
        agent = AgentProcess(reg, tmp_path / "agent", "SN-WIPED")
        wait_for(
            lambda: agent.state().get("phase") == "awaiting_approval", 60, "the new key to wait"
        )
        assert agent.state()["device_id"] == device_id
        out = ctl.cli("devices", "approve", device_id)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: agent.state().get("phase") == "ready", 60, "the agent back")
        with ctl.client() as c:
            assert [d["id"] for d in c.get("/devices").json()] == [device_id]
    finally:
        if agent is not None:
            agent.stop()
        ctl.close()
