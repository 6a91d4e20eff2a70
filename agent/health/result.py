"""What one health check found, as the evidence bundle and the status report carry it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    """One line an operator reads first: why it failed, or what passed."""
    duration_s: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)
    """Probe expected against actual, latency samples, a command's output tail."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CheckResult:
        return cls(**doc)
