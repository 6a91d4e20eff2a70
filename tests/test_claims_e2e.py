"""QR claims with real processes: an agent flashed without a token, a controller over
HTTPS with two workers (the poll and the decision may land on different ones). zbar
reads the agent's claim.png; an installer approves through the API; the agent is
enrolled and reports; restarted mid-claim it keeps its claim; rejected, it exits 3."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgefleet.signing import cert_pin
from tests.support.apiclient import csr_for
from tests.support.processes import EDGEFLEET, AgentProcess, ControllerProcess, wait_for

APPROVED_TO_ENROLLED_BUDGET_S = 2.0


def zbar(png: bytes) -> list[str]:
    try:
        from PIL import Image
        from pyzbar.pyzbar import decode
    except ImportError as exc:  # pragma: no cover - the message is the point
        pytest.skip(f"pyzbar or libzbar0 is missing ({exc}): pip install pyzbar, apt libzbar0")
    return [s.data.decode() for s in decode(Image.open(io.BytesIO(png)))]


def claim_registration(ctl: ControllerProcess, path: Path) -> Path:
    """The "claim" image: controller URL, controller id and root pin, and no token."""
    root = x509.load_pem_x509_certificate(Path(ctl.ca).read_bytes())
    path.write_text(
        yaml.safe_dump(
            {
                "controller_url": ctl.url,
                "controller_id": (ctl.data_dir / "controller-id").read_text().strip(),
                "root_pins": [cert_pin(root)],
            }
        )
    )
    return path


def stored_claim(agent: AgentProcess) -> dict[str, Any] | None:
    try:
        return json.loads((agent.state_dir / "claim.json").read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return None


def agent_status(state_dir: Path) -> dict[str, Any]:
    done = subprocess.run(
        [*EDGEFLEET, "agent", "status", "--state-dir", str(state_dir), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def installer(ctl: ControllerProcess, site: str) -> str:
    with ctl.client() as c:
        c.post("/sites", json={"name": site}).raise_for_status()
        r = c.post("/users", json={"username": f"inst-{site}", "role": "installer", "site": site})
        r.raise_for_status()
        return r.json()["api_token"]  # type: ignore[no-any-return]


@pytest.mark.usefixtures("postgres_available")
def test_an_approved_claim_enrols_the_waiting_agent(tmp_path: Path, postgres_url: str) -> None:
    """PostgreSQL, two workers: the approval wakes the poll through LISTEN/NOTIFY."""
    ctl = ControllerProcess(
        tmp_path / "ctl", database_url=postgres_url, device_interval_seconds=1, workers=2
    ).start()
    agent = None
    try:
        token = installer(ctl, "shop-1")
        reg = claim_registration(ctl, tmp_path / "registration.yaml")
        agent = AgentProcess(reg, tmp_path / "agent", "SN-CLAIM")
        png = wait_for(
            lambda: (
                (agent.state_dir / "claim.png").exists()
                and (agent.state_dir / "claim.png").read_bytes()
            ),
            60,
            "the agent's claim.png",
        )
        mine = stored_claim(agent)
        assert mine is not None
        assert (agent.state_dir / "claim.json").stat().st_mode & 0o777 == 0o600
        assert zbar(png) == [mine["url"]]
        assert mine["url"] == f"{ctl.url}/console/claims/{mine['id']}"
        with ctl.client() as c:
            auth = {"authorization": f"Bearer {token}"}
            seen = c.get(f"/claims/{mine['id']}", headers=auth).json()
        assert (seen["code"], seen["serial"], seen["state"]) == (
            mine["code"],
            "SN-CLAIM",
            "pending",
        )
        assert f"code: {mine['code']}" in (agent.state_dir / "claim.txt").read_text()
        log = agent.log.read_text()
        assert f"Confirmation code: {mine['code']}" in log and mine["url"] in log and "█" in log
        assert mine["secret"] not in log, "the secret is shown to no one"
        status = agent_status(agent.state_dir)["claim"]
        assert (status["code"], status["url"]) == (mine["code"], mine["url"])
        assert "secret" not in json.dumps(status)

        # Restarted mid-claim: the same claim, polled with the same secret, shown again.
        agent.stop()
        agent = AgentProcess(reg, tmp_path / "agent", "SN-CLAIM")
        wait_for(
            lambda: agent.log.read_text().count(f"Confirmation code: {mine['code']}") == 2,
            60,
            "the restarted agent showing its claim again",
        )
        time.sleep(1)
        assert stored_claim(agent) == mine
        with ctl.client() as c:
            assert [x["id"] for x in c.get("/claims").json()] == [mine["id"]]

        body = {"site": "shop-1", "name": "till-3", "labels": {"lane": "3"}}
        with ctl.client() as c:
            r = c.post(f"/claims/{mine['id']}/approve", json=body, headers=auth)
            decided = time.monotonic()
            assert r.status_code == 200, r.text
            device_id = r.json()["device_id"]
            wait_for(lambda: agent.state().get("device_id") == device_id, 30, "enrolment")
            enrolled = time.monotonic() - decided
            reported = wait_for(
                lambda: c.get(f"/devices/{device_id}").json()["status"], 30, "a status report"
            )
        print(f"approved -> agent enrolled: {enrolled * 1000:.0f} ms")
        assert enrolled < APPROVED_TO_ENROLLED_BUDGET_S
        assert reported["health"]["ok"] is True
        wait_for(lambda: agent.state().get("phase") == "ready", 30, "the agent ready")
        assert not (agent.state_dir / "claim.json").exists()
        assert not (agent.state_dir / "claim.png").exists()
        assert agent_status(agent.state_dir)["claim"] is None
        assert agent.proc.poll() is None
    finally:
        if agent is not None:
            agent.stop()
        ctl.close()


def test_a_rejected_claim_stops_the_agent_with_exit_code_3(tmp_path: Path) -> None:
    """SQLite, two workers: the rejection wakes the poll through the workers' sockets.
    On the way, the agent follows its claim when it is asked for again with its key (a
    new secret) and makes a new one when it expires."""
    ctl = ControllerProcess(tmp_path / "ctl", device_interval_seconds=1, workers=2).start()
    agent = None
    try:
        reg = claim_registration(ctl, tmp_path / "registration.yaml")
        agent = AgentProcess(reg, tmp_path / "agent", "SN-NOPE")
        first = wait_for(lambda: stored_claim(agent), 60, "the agent's claim")

        key = serialization.load_pem_private_key((agent.state_dir / "key.pem").read_bytes(), None)
        with ctl.client() as c:
            again = c.post("/claims", json={"csr": csr_for(key)}).json()
        assert again["id"] == first["id"] and again["secret"] != first["secret"]
        wait_for(
            lambda: (stored_claim(agent) or first)["secret"] not in (first["secret"], ""),
            30,
            "the agent asking again for the claim whose secret went stale",
        )
        assert stored_claim(agent)["id"] == first["id"]  # type: ignore[index]

        with sqlite3.connect(ctl.data_dir / "edgefleet.db") as db:
            db.execute(
                "UPDATE claim SET expires_at = '2000-01-01 00:00:00' WHERE id = ?", [first["id"]]
            )
        mine = wait_for(
            lambda: (c := stored_claim(agent)) and c["id"] != first["id"] and c,
            30,
            "a new claim after the first expired",
        )
        wait_for(
            lambda: f"Confirmation code: {mine['code']}" in agent.log.read_text(),
            30,
            "the new claim shown",
        )
        wait_for(lambda: agent.state().get("phase") == "awaiting_approval", 30, "a held poll")
        time.sleep(0.5)
        with ctl.client() as c:
            r = c.post(f"/claims/{mine['id']}/reject", json={"reason": "not one of ours"})
            assert r.status_code == 200, r.text
        decided = time.monotonic()
        code = agent.proc.wait(30)
        stopped = time.monotonic() - decided
        print(f"rejected -> agent stopped: {stopped * 1000:.0f} ms")
        assert code == 3
        assert stopped < 2.5, "woken at once, not at the poll's end"
        log = agent.log.read_text()
        assert "not one of ours" in log and "restart the agent to show a new claim" in log
        assert agent.state()["phase"] == "rejected"
        assert stored_claim(agent) is None, "a restart shows a new claim"
    finally:
        if agent is not None:
            agent.stop()
        ctl.close()
