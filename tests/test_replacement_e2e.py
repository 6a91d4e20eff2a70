"""Hardware replacement end to end (PostgreSQL, two workers): a real agent enrols over
HTTPS with a replacement-mode token and takes the old device's place, name, labels,
profile and pinned revision, with no operator step; the old device's agent is refused
at once and stops."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import AgentProcess, ControllerProcess, wait_for


def _show(ctl: ControllerProcess, device_id: str) -> dict[str, Any]:
    out = ctl.cli("devices", "show", device_id, "--output", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.usefixtures("postgres_available")
def test_agent_with_a_replacement_token_takes_the_old_devices_place(
    tmp_path: Path, postgres_url: str, agents: list[AgentProcess]
) -> None:
    ctl = ControllerProcess(
        tmp_path / "ctl", database_url=postgres_url, device_interval_seconds=1
    ).start()
    try:
        with ctl.client() as c:
            c.post("/sites", json={"name": "shop-1"}).raise_for_status()
            for v in (1, 2):
                spec = {"name": "vision", "spec": {"config": {"v": v}}}
                c.post("/profiles", json=spec).raise_for_status()
        reg = ctl.registration(tmp_path / "old.yaml", profile="vision", labels={"zone": "front"})
        old = AgentProcess(reg, tmp_path / "old", "SN-OLD")
        agents.append(old)
        wait_for(lambda: old.state().get("applied_revision") == 2, 60, "the old device on v2")
        old_id = old.state()["device_id"]
        assert ctl.cli("devices", "rename", old_id, "till-3").returncode == 0
        pinned = ctl.cli("devices", "assign", old_id, "vision", "--revision", "1")
        assert pinned.returncode == 0, pinned.stderr
        wait_for(lambda: old.state().get("applied_revision") == 1, 60, "the old device on v1")

        made = ctl.cli(
            "tokens",
            "create",
            "--replaces",
            old_id,
            "--label",
            "hw=pi5",
            "--registration",
            str(tmp_path / "new.yaml"),
            "--output",
            "json",
        )
        assert made.returncode == 0, made.stderr
        token = json.loads(made.stdout)
        assert (token["site"], token["max_uses"], token["replaces"]) == ("shop-1", 1, old_id)

        new = AgentProcess(tmp_path / "new.yaml", tmp_path / "new", "SN-NEW")
        agents.append(new)
        new_id = wait_for(lambda: new.state().get("device_id"), 60, "the new device's enrolment")
        replaced_at = time.monotonic()
        # The old agent is refused on its next call (interval 1 s) and stops.
        assert old.proc.wait(15) == 4
        assert time.monotonic() - replaced_at < 10
        assert old.state()["phase"] == "decommissioned"
        # The new one runs the old one's pinned revision under its name and labels.
        wait_for(lambda: new.state().get("applied_revision") == 1, 60, "the new device on v1")
        wait_for(lambda: new.state().get("phase") == "ready", 60, "the new device ready")
        shown = _show(ctl, new_id)
        assert shown["name"] == "till-3" and shown["replaces"] == old_id
        assert shown["labels"] == {"zone": "front", "hw": "pi5"}
        assert (shown["profile"], shown["profile_revision"]) == ("vision", 1)
        gone = _show(ctl, old_id)
        assert (gone["state"], gone["replaced_by"]) == ("decommissioned", new_id)
        listed = ctl.cli("devices", "list", "--search", "till-3", "--output", "json")
        assert [d["id"] for d in json.loads(listed.stdout)] == [old_id, new_id]
        with ctl.client() as c:
            audit = [a for a in c.get("/audit").json() if a["action"] == "device.replace"]
        assert audit[0]["detail"]["via"] == f"token {token['kid']}"
    finally:
        ctl.close()
