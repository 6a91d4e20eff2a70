"""A moved device's outcome, read from its last status report: pure, so the status hook
and the engine read a report the same way."""

from __future__ import annotations

from typing import Any

from edgefleet.controller.rollouts.states import DeviceOutcome

FAILED_UPDATES = ("rolled_back", "failed")


def attempt_of(status: dict[str, Any], target: int) -> str | None:
    """When the device's last attempt at ``target`` started, if its last attempt was one."""
    last = status.get("last_update") or {}
    return str(last.get("started_at")) if last.get("revision") == target else None


def classify(
    status: dict[str, Any], target: int, known_attempt: str | None
) -> tuple[DeviceOutcome, str] | None:
    """``succeeded`` when the device runs ``target`` and is healthy, ``failed`` (with the
    device's reason) when an attempt at it other than ``known_attempt`` failed or rolled
    back; None while neither is known."""
    last = status.get("last_update") or {}
    if (
        last.get("revision") == target
        and last.get("outcome") in FAILED_UPDATES
        and str(last.get("started_at")) != known_attempt
    ):
        why = str(last.get("reason") or "no reason given")
        return DeviceOutcome.failed, f"{last['outcome'].replace('_', ' ')} on the device: {why}"
    healthy = (status.get("health") or {}).get("ok", True)
    if status.get("applied_revision") == target and not status.get("updating") and healthy:
        return DeviceOutcome.succeeded, ""
    return None
