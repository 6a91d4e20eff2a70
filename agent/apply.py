"""The seam where a desired state becomes the running state.

This slice has no update engine: "applying" records the revision as applied.
The A/B slot engine (DESIGN.md, A/B slots) replaces :class:`RecordOnlyApplier`
with one that stages, writes the inactive slot, tries it and commits or rolls
back; the daemon only needs the :class:`Applier` protocol.
"""

from __future__ import annotations

from typing import Protocol

from edgefleet.wire import DesiredState


class Applier(Protocol):
    def apply(self, desired: DesiredState) -> int:
        """Make ``desired`` the running state; return the revision now applied."""
        ...


class RecordOnlyApplier:
    """Accept every desired state as applied (no slots, no health checks yet)."""

    def apply(self, desired: DesiredState) -> int:
        return desired.revision
