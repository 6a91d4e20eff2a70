"""The status report's inference figures, from the runners that serve the active set.

Rollout waves gate on them (p95 latency, error rate), so they come from every model the
device serves: calls and errors added up, the slowest model's p95.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from edgefleet.errors import EdgefleetError
from edgefleet.wire import InferenceStats

if TYPE_CHECKING:
    from edgefleet.agent.runner.api import Health
    from edgefleet.agent.runner.supervisor import Runner

log = logging.getLogger("edgefleet.agent")


def collect(runners: Iterable[Runner]) -> InferenceStats:
    """What the runners answer on ``/health``; one that does not answer is left out, so
    a restarting runner never costs the device its status report."""
    answers = []
    for runner in runners:
        try:
            answers.append(runner.health())
        except EdgefleetError as exc:
            name = runner.config.name or runner.config.model
            log.debug("inference stats leave out %s: %s", name, exc.message)
    return summarize(answers)


def summarize(answers: Iterable[Health]) -> InferenceStats:
    """Calls and errors summed over the models, the largest p95 of any of them."""
    calls = errors = 0
    p95: float | None = None
    for health in answers:
        calls += health["calls"]
        errors += health["errors"]
        model_p95 = health.get("p95_ms")
        if model_p95 is not None and (p95 is None or model_p95 > p95):
            p95 = model_p95
    return quantized(calls, p95, errors / calls if calls else None)


def quantized(count: int, p95_ms: float | None, error_rate: float | None) -> InferenceStats:
    """Rounded (count and p95 to 2 significant digits, error rate to 3 decimals) so that
    a steady device sends the same bytes every interval: the controller writes a status
    report to its database only when its bytes change, and unrounded figures would turn
    every heartbeat into a write."""
    return InferenceStats(
        count=int(_significant(count)),
        p95_ms=None if p95_ms is None else _significant(p95_ms),
        error_rate=None if error_rate is None else round(error_rate, 3),
    )


def _significant(value: float, digits: int = 2) -> float:
    return float(f"{value:.{digits}g}")
