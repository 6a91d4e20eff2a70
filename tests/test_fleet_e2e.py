"""End to end with real processes over real HTTPS on loopback: a controller, agents
started as a device starts them, and the operator CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.faultproxy import FaultProxy
from tests.support.processes import AgentProcess, ControllerProcess, wait_for


def _ready_ids(ctl: ControllerProcess) -> set[str]:
    out = ctl.cli("devices", "list", "--state", "ready", "--output", "json")
    assert out.returncode == 0, out.stderr
    return {d["id"] for d in json.loads(out.stdout)}


def test_twenty_agents_enrol_and_report_ready(tmp_path: Path, agents: list[AgentProcess]) -> None:
    """SQLite. Zero touch: flashed registration file, no person involved."""
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1).start()
    try:
        reg = ctl.registration(tmp_path / "registration.yaml", max_uses=20)
        for i in range(20):
            agents.append(AgentProcess(reg, tmp_path / f"agent-{i}", f"SN-{i:03d}"))
        ready = wait_for(
            lambda: len(_ready_ids(ctl)) == 20 and _ready_ids(ctl),
            90,
            "20 devices ready",
            every=0.5,
        )
        assert {a.state()["device_id"] for a in agents} == ready
        listed = json.loads(ctl.cli("devices", "list", "--output", "json").stdout)
        assert sorted(d["serial"] for d in listed) == [f"SN-{i:03d}" for i in range(20)]
        assert all(d["site"] == "shop-1" and d["last_seen_at"] for d in listed)
        tokens = json.loads(ctl.cli("tokens", "list", "--output", "json").stdout)
        assert tokens[0]["uses"] == 20
    finally:
        ctl.close()


@pytest.mark.usefixtures("postgres_available")
def test_controller_killed_mid_enrolment_every_agent_enrols_once(
    tmp_path: Path, postgres_url: str, agents: list[AgentProcess]
) -> None:
    """PostgreSQL. SIGKILL the controller while agents enrol; restart it; each agent ends
    enrolled exactly once (no duplicate device, token uses equal to devices).

    Half the fleet is powered on only once the controller is dead, so enrolments span
    the kill whatever the machine's speed (on a fast machine all twenty once enrolled
    before the kill landed, and the test then proved nothing)."""
    ctl = ControllerProcess(
        tmp_path / "ctl", database_url=postgres_url, device_interval_seconds=1
    ).start()
    try:
        reg = ctl.registration(tmp_path / "registration.yaml")
        for i in range(10):
            agents.append(AgentProcess(reg, tmp_path / f"agent-{i}", f"SN-{i:03d}"))
        with ctl.client() as c:
            wait_for(
                lambda: len(c.get("/devices").json()) >= 1, 60, "the first enrolment", every=0.02
            )
        ctl.kill()
        for i in range(10, 20):
            agents.append(AgentProcess(reg, tmp_path / f"agent-{i}", f"SN-{i:03d}"))
        ctl.start()
        ready = wait_for(
            lambda: len(_ready_ids(ctl)) == 20 and _ready_ids(ctl),
            120,
            "20 devices ready after the restart",
            every=0.5,
        )
        with ctl.client() as c:
            devices = c.get("/devices").json()
            uses = c.get("/tokens").json()[0]["uses"]
        assert len(devices) == 20, [d["serial"] for d in devices]
        assert {a.state()["device_id"] for a in agents} == ready
        assert uses == 20
    finally:
        ctl.close()


def test_agent_keeps_retrying_while_controller_is_down(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1).start()
    try:
        reg = ctl.registration(tmp_path / "registration.yaml")
        ctl.stop()
        agent = AgentProcess(reg, tmp_path / "agent", "SN-DOWN")
        agents.append(agent)
        wait_for(lambda: agent.state().get("last_error"), 30, "the agent to notice")
        assert agent.proc.poll() is None, "the agent must keep running while it cannot enrol"
        assert not agent.state().get("device_id")
        ctl.start()
        wait_for(lambda: agent.state().get("phase") == "ready", 90, "the agent to enrol")
    finally:
        ctl.close()


def test_agent_behind_dropping_proxy_enrols_when_network_returns(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1).start()
    try:
        reg = ctl.registration(tmp_path / "registration.yaml")
        with FaultProxy(ctl.port) as proxy:
            proxy.drop()
            doc = yaml.safe_load(reg.read_text())
            doc["controller_url"] = f"https://127.0.0.1:{proxy.port}"
            reg.write_text(yaml.safe_dump(doc))
            agent = AgentProcess(reg, tmp_path / "agent", "SN-PROXY")
            agents.append(agent)
            wait_for(lambda: agent.state().get("last_error"), 30, "a failed attempt")
            with ctl.client() as c:
                assert c.get("/devices").json() == []
            proxy.forward()
            wait_for(lambda: agent.state().get("phase") == "ready", 90, "enrolment via proxy")
    finally:
        ctl.close()


def test_agent_refuses_controller_whose_chain_matches_no_pin(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1).start()
    try:
        reg = ctl.registration(tmp_path / "registration.yaml")
        doc = yaml.safe_load(reg.read_text())
        doc["root_pins"] = ["sha256:" + "ab" * 32]
        reg.write_text(yaml.safe_dump(doc))
        agent = AgentProcess(reg, tmp_path / "agent", "SN-PIN")
        agents.append(agent)
        error = wait_for(lambda: agent.state().get("last_error"), 30, "the pin refusal")
        assert "pin" in error.lower()
        with ctl.client() as c:
            assert c.get("/devices").json() == []
            assert c.get("/tokens").json()[0]["uses"] == 0
        assert not (tmp_path / "agent" / "device.json").exists()
    finally:
        ctl.close()


def test_decommissioned_device_is_refused_and_agent_stops(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1).start()
    try:
        reg = ctl.registration(tmp_path / "registration.yaml")
        agent = AgentProcess(reg, tmp_path / "agent", "SN-DECOM")
        agents.append(agent)
        wait_for(lambda: agent.state().get("phase") == "ready", 60, "the agent ready")
        device_id = agent.state()["device_id"]
        out = ctl.cli("devices", "decommission", device_id, "--output", "json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["state"] == "decommissioned"
        assert agent.proc.wait(30) == 4
        assert agent.state()["phase"] == "decommissioned"
    finally:
        ctl.close()
