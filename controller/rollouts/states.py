"""The states of a rollout, of its waves and of its devices, as stored."""

from __future__ import annotations

from enum import StrEnum


class RolloutState(StrEnum):
    running = "running"
    paused = "paused"
    """Stopped by an operator or a failed gate (``on_failure: pause``); resumable."""
    completed = "completed"
    aborted = "aborted"
    """Stopped for good; devices already moved keep the target until rolled back."""
    rolled_back = "rolled_back"


ACTIVE = (RolloutState.running, RolloutState.paused)
"""A profile has at most one rollout in these states."""


class WaveState(StrEnum):
    pending = "pending"
    shadowing = "shadowing"
    """Its devices run the target's changed models in shadow until ``shadow_until``; none
    is moved until the shadow gates pass."""
    updating = "updating"
    """Its devices are being moved to the target, within windows and the concurrency cap."""
    baking = "baking"
    """Every device has an outcome; the new revision runs until ``bake_until``."""
    passed = "passed"
    failed = "failed"


class DeviceOutcome(StrEnum):
    pending = "pending"
    """Not moved yet."""
    updating = "updating"
    """Moved to the target; no outcome yet."""
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    """Offline under ``offline: skip``; it gets the target when the rollout completes."""
    reverted = "reverted"
    """Moved back by a rollback."""


UNRESOLVED = (DeviceOutcome.pending, DeviceOutcome.updating)
MOVED = (DeviceOutcome.updating, DeviceOutcome.succeeded, DeviceOutcome.failed)
"""Devices whose pin a rollback puts back (a failed device may have been moved)."""

ENGINE = "edgefleet"
"""The actor of the engine's own state changes."""
