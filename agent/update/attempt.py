"""What the update keeps on disk: the attempt in flight and the last outcome.

``update.json`` is written (atomically, fsynced) before each state acts, so after a
crash the agent knows the state it died in, the revision, the slot and how many steps
the attempt has taken; ``outcome.json`` is the last attempt's end, for status reports.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edgefleet.agent.files import read_json, write_json
from edgefleet.agent.update.transitions import State

log = logging.getLogger("edgefleet.agent")

OutcomeKind = Literal["committed", "rolled_back", "failed"]


@dataclass(frozen=True)
class Request:
    """One revision to apply; ``models`` is handed to the stager as it is."""

    revision: int
    models: list[dict[str, Any]]
    policies: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attempt:
    state: State = State.idle
    steps: int = 0
    """States entered since the attempt began (or since the last loop was caught)."""
    revision: int = 0
    models: list[dict[str, Any]] = field(default_factory=list)
    policies: dict[str, Any] = field(default_factory=dict)
    slot: str = ""
    """The slot written and tried: never the active one."""
    from_slot: str | None = None
    """The slot active when the attempt began; None on a first install."""
    started_at: str = ""
    manifest: dict[str, str] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    outcome: OutcomeKind | None = None
    commit_gap_ms: float | None = None

    @property
    def first_install(self) -> bool:
        return self.from_slot is None

    @property
    def request(self) -> Request:
        return Request(self.revision, self.models, self.policies)

    @classmethod
    def begin(cls, request: Request, slot: str, from_slot: str | None) -> Attempt:
        return cls(
            state=State.staging,
            revision=request.revision,
            models=request.models,
            policies=request.policies,
            slot=slot,
            from_slot=from_slot,
            started_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )


@dataclass(frozen=True)
class Outcome:
    """How the last attempt ended, for ``edgefleet agent status`` and the controller."""

    revision: int
    outcome: OutcomeKind
    slot: str
    reason: str
    evidence: str
    """Path of the evidence bundle on the device."""
    started_at: str
    finished_at: str
    commit_gap_ms: float | None = None


class AttemptStore:
    """``update.json`` and ``outcome.json`` in the update's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "update.json"
        self.outcome_path = folder / "outcome.json"

    def load(self) -> Attempt:
        """The attempt in flight, or an idle one. A damaged file (it is written atomically,
        so only the medium can damage it) is logged and forgotten: the boot-control
        record alone then decides what serves."""
        try:
            doc = read_json(self.path)
            return Attempt(**{**doc, "state": State(doc["state"])}) if doc else Attempt()
        except (ValueError, TypeError, KeyError) as exc:
            log.error(
                "update state %s is unreadable (%s); starting from the record", self.path, exc
            )
            return Attempt()

    def save(self, attempt: Attempt) -> None:
        write_json(self.path, asdict(attempt))

    def load_outcome(self) -> Outcome | None:
        try:
            doc = read_json(self.outcome_path)
            return Outcome(**doc) if doc else None
        except (ValueError, TypeError) as exc:
            log.error("last update outcome %s is unreadable: %s", self.outcome_path, exc)
            return None

    def save_outcome(self, outcome: Outcome) -> None:
        write_json(self.outcome_path, asdict(outcome))
