"""CA rotation with real processes: devices learn the next root from their desired
state, devices that only pin the old root (flashed before the rotation, or offline
throughout) follow by the old root's signature, and new registration files pin both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from cryptography import x509

from edgefleet.signing import cert_pin
from tests.support.processes import AgentProcess, ControllerProcess, wait_for


def _pki(ctl: ControllerProcess, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "pki", *args, "--data-dir", str(ctl.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _trusted_pins(agent: AgentProcess) -> set[str]:
    path = agent.state_dir / "trust.pem"
    if not path.exists():
        return set()
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    return {cert_pin(c) for c in certs if c.subject == c.issuer}


def _seen(ctl: ControllerProcess, device_id: str) -> str:
    with ctl.client() as c:
        return c.get(f"/devices/{device_id}").json()["last_seen_at"] or ""


def test_rotation_keeps_every_device_and_old_images_working(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1, workers=1).start()
    try:
        old_reg = ctl.registration(tmp_path / "old.yaml")
        old_pins = yaml.safe_load(old_reg.read_text())["root_pins"]
        online = AgentProcess(old_reg, tmp_path / "online", "SN-ONLINE")
        offline = AgentProcess(old_reg, tmp_path / "offline", "SN-OFFLINE")
        agents += [online, offline]
        for a in (online, offline):
            wait_for(lambda a=a: a.state().get("phase") == "ready", 60, "agents ready")
        offline.stop()

        ctl.stop()
        staged = _pki(ctl, "rotate").split()[3]
        ctl.start()
        with ctl.client() as c:
            assert c.get("/controller").json()["root_pins"] == [old_pins[0], staged]
        wait_for(
            lambda: staged in _trusted_pins(online), 30, "the online agent to learn the next root"
        )
        both = ctl.registration(tmp_path / "both.yaml")
        assert yaml.safe_load(both.read_text())["root_pins"] == [old_pins[0], staged]

        ctl.stop()
        _pki(ctl, "promote")
        ctl.start()
        server = x509.load_pem_x509_certificates((ctl.data_dir / "pki" / "server.pem").read_bytes())
        assert (
            server[1].issuer != server[0].subject
            and cert_pin(
                x509.load_pem_x509_certificate((ctl.data_dir / "pki" / "root.pem").read_bytes())
            )
            == staged
        )

        device_id = online.state()["device_id"]
        before = _seen(ctl, device_id)
        wait_for(lambda: _seen(ctl, device_id) > before, 30, "the online agent to report again")
        assert online.state()["phase"] == "ready"

        revived = AgentProcess(old_reg, tmp_path / "offline", "SN-OFFLINE")
        flashed_before = AgentProcess(old_reg, tmp_path / "late", "SN-LATE")
        agents += [revived, flashed_before]
        for a in (revived, flashed_before):
            # state.json of the revived agent says ready from before: wait for new trust
            wait_for(lambda a=a: staged in _trusted_pins(a), 60, "old-pin agents to follow")
            wait_for(lambda a=a: a.state().get("phase") == "ready", 60, "old-pin agents ready")
        revived_id = revived.state()["device_id"]
        seen = _seen(ctl, revived_id)
        wait_for(lambda: _seen(ctl, revived_id) > seen, 30, "the revived agent to report")

        new_reg = yaml.safe_load(ctl.registration(tmp_path / "new.yaml").read_text())
        assert new_reg["root_pins"] == [staged]
        listed = json.loads(ctl.cli("devices", "list", "--output", "json").stdout)
        assert sorted(d["serial"] for d in listed) == ["SN-LATE", "SN-OFFLINE", "SN-ONLINE"]
    finally:
        ctl.close()
