"""The controller's side of the device lifecycle, as one transition table.

    new -> enrolling -> [awaiting_approval] -> enrolled -> ready <-> updating -> ready | degraded

``new`` and ``enrolling`` live on the device. ``rejected`` is where a claim an
operator refused ends (the device can never enrol with that key);
``decommissioned`` is reachable from every state and final.
"""

from __future__ import annotations

from edgefleet.errors import Conflict
from edgefleet.wire import DeviceState as S
from edgefleet.wire import StatusReport

TRANSITIONS: dict[S, frozenset[S]] = {
    S.awaiting_approval: frozenset({S.enrolled, S.rejected, S.decommissioned}),
    S.enrolled: frozenset({S.ready, S.updating, S.degraded, S.decommissioned}),
    S.ready: frozenset({S.updating, S.degraded, S.decommissioned}),
    S.updating: frozenset({S.ready, S.degraded, S.decommissioned}),
    S.degraded: frozenset({S.ready, S.updating, S.decommissioned}),
    S.rejected: frozenset({S.decommissioned}),
    S.decommissioned: frozenset(),
}

ACTIVE = frozenset({S.enrolled, S.ready, S.updating, S.degraded})
"""States whose devices hold working credentials."""


def check(current: S, target: S) -> S:
    """Return ``target`` if the table allows it from ``current``, else raise Conflict."""
    if current == target or target in TRANSITIONS[current]:
        return target
    raise Conflict(
        f"a device that is {current.value} cannot become {target.value}",
        code="invalid_transition",
    )


def state_after_status(current: S, report: StatusReport) -> S:
    """What a status report says the device is now (checked against the table)."""
    if report.updating:
        target = S.updating
    elif not report.health.ok:
        target = S.degraded
    else:
        target = S.ready
    return check(current, target)
