"""The seam where a desired state becomes the running state.

Direct mode serves the desired models (``serving.DirectApplier``); the A/B slot engine
(DESIGN.md, A/B slots) will stage, write the inactive slot, try it and commit or roll
back behind the same protocol, and the daemon needs nothing else.
"""

from __future__ import annotations

from typing import Protocol

from edgefleet.wire import DesiredState


class Applier(Protocol):
    def apply(self, desired: DesiredState) -> int:
        """Make ``desired`` the running state; return the revision now applied. Raises an
        ``EdgefleetError`` saying why when it cannot (the running state is kept)."""
        ...

    def close(self) -> None:
        """Stop what the applier runs (the agent is stopping)."""
        ...
