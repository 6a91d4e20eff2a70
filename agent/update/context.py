"""What the states act on: the record, the slots, the runners, the attempt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.agent.health.checks import Candidate
from edgefleet.agent.health.policy import HealthPolicy, parse_policy
from edgefleet.agent.slots.backend import SlotBackend
from edgefleet.agent.slots.record import BootControl, Record
from edgefleet.agent.update.attempt import Attempt, AttemptStore, Request
from edgefleet.agent.update.modelset import StagedModel
from edgefleet.agent.update.switch import ModelServing

Stager = Callable[[Request], list[StagedModel]]
"""Pulls (or finds) the request's models, verified; raises an EdgefleetError saying why not."""


@dataclass
class Context:
    boot: BootControl
    slots: SlotBackend
    serving: ModelServing
    stager: Stager
    store: AttemptStore
    staging: Path
    evidence: Path
    attempt: Attempt = field(default_factory=Attempt)
    candidates: list[Candidate] = field(default_factory=list)
    """Started by ``trying`` in this process; gone after a crash (``checking`` is then
    resumed as ``trying``)."""

    @property
    def log_file(self) -> Path:
        return self.store.folder / "attempt.log"

    @property
    def policy(self) -> HealthPolicy:
        return parse_policy(self.attempt.policies)

    def serve_active(self, record: Record) -> None:
        """The main sockets serve the record's active slot (nothing on a first install)."""
        active = record.active
        good = active is not None and record.slots[active].state == "good"
        self.serving.serve(self.slots.open(active) if good and active else None, active)
