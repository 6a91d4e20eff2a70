"""``state.json``: what the agent is doing, for people, tests and the next start.

Written atomically, and only when something in it changed, so a heartbeat
does not wear out an SD card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

from edgefleet.agent.files import read_json, write_json

STATE_FILE = "state.json"
DESIRED_FILE = "desired.json"


class Phase(StrEnum):
    """The device side of the lifecycle in DESIGN.md."""

    new = "new"
    trusting = "trusting"
    """Fetching the controller's chain and checking it against the pins."""
    enrolling = "enrolling"
    awaiting_approval = "awaiting_approval"
    enrolled = "enrolled"
    ready = "ready"
    rejected = "rejected"
    decommissioned = "decommissioned"


@dataclass(frozen=True)
class AgentState:
    phase: Phase = Phase.new
    device_id: str | None = None
    enrolled_at: str | None = None
    applied_revision: int | None = None
    desired_etag: str | None = None
    interval_seconds: int | None = None
    last_error: str | None = None
    update_retries: int = 0
    """The operator retries (desired state's ``update_retries``) already acted on."""
    reported_update: str | None = None
    """``<revision>@<started_at>`` of the last update attempt put in the outbox."""


class StateStore:
    """The current AgentState, persisted on every change."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        data = read_json(self.path) or {}
        known = {k: v for k, v in data.items() if k in AgentState.__dataclass_fields__}
        if "phase" in known:
            known["phase"] = Phase(known["phase"])
        self.current = AgentState(**known)

    def update(self, **changes: object) -> AgentState:
        new = replace(self.current, **changes)  # type: ignore[arg-type]
        if new != self.current:
            self.current = new
            write_json(self.path, asdict(new))
        return new
