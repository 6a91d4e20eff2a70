"""Run a policy's checks against a candidate, each within its timeout, all within the
deadline, and say which failed.

Every check runs even after one failed (the evidence shows all that is wrong), except
that nothing runs once the deadline has passed. A last ``runner_stable`` check fails if
a candidate runner died or was restarted while the others ran: a model that crashes
its runtime under load must not pass because each call happened to find it up.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from edgefleet.agent.health.checks import CHECKS, Outcome, Target
from edgefleet.agent.health.policy import CheckSpec, HealthPolicy
from edgefleet.agent.health.result import CheckResult
from edgefleet.errors import EdgefleetError

log = logging.getLogger("edgefleet.agent")

OWN_TIMEOUT_GRACE_S = 0.5


def run_checks(policy: HealthPolicy, target: Target, deadline: float) -> list[CheckResult]:
    """Results in the policy's order; ``deadline`` is a ``time.monotonic()`` instant."""
    pids = {c.name: (c.runner.pid, c.runner.restarts) for c in target.candidates}
    results = []
    for spec in policy.checks:
        left = deadline - time.monotonic()
        if left <= 0:
            result = CheckResult(
                spec.type,
                False,
                f"not run: the health deadline ({policy.deadline_seconds:g} s) had passed",
            )
        else:
            result = _timed(spec, target, min(spec.timeout_seconds, left))
        _log(result)
        results.append(result)
    stable = _stable(target, pids)
    _log(stable)
    return [*results, stable]


def _timed(spec: CheckSpec, target: Target, timeout: float) -> CheckResult:
    """The check in a thread, abandoned (it is a daemon thread) when it overruns. A check
    that keeps its own timeout (exec, http) gets a moment more to say what it saw."""
    spec = replace(spec, timeout_seconds=timeout)
    box: list[Outcome | BaseException] = []

    def work() -> None:
        try:
            box.append(CHECKS[spec.type](spec, target))
        except Exception as exc:  # any failure of a check is its result, with its words
            box.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=work, name=f"health-{spec.type}", daemon=True)
    worker.start()
    worker.join(timeout + OWN_TIMEOUT_GRACE_S)
    took = time.monotonic() - started
    if not box:
        return CheckResult(spec.type, False, f"did not finish within {timeout:.3g} s", took)
    found = box[0]
    if isinstance(found, BaseException):
        words = found.message if isinstance(found, EdgefleetError) else str(found)
        return CheckResult(spec.type, False, f"{type(found).__name__}: {words}", took)
    ok, detail, evidence = found
    return CheckResult(spec.type, ok, detail, took, evidence)


def _stable(target: Target, before: dict[str, tuple[int | None, int]]) -> CheckResult:
    """Ask each runner which child answers: a dead one does not, a restarted one answers
    with another pid (the supervisor's own view lags until it has reaped the child)."""
    died: list[str] = []
    evidence: dict[str, Any] = {}
    for c in target.candidates:
        pid, restarts = before[c.name]
        try:
            now: int | None = c.runner.health()["pid"]
        except EdgefleetError:
            now = None
        evidence[c.name] = {"pid_before": pid, "pid_after": now, "restarts": c.runner.restarts}
        if now != pid or c.runner.restarts != restarts:
            died.append(f"{c.name} (pid {pid}) died during the checks; see its log")
    if died:
        return CheckResult("runner_stable", False, "; ".join(died), evidence=evidence)
    return CheckResult("runner_stable", True, "no runner died during the checks", evidence=evidence)


def _log(result: CheckResult) -> None:
    level = logging.INFO if result.ok else logging.WARNING
    verdict = "passed" if result.ok else "FAILED"
    log.log(
        level,
        "health check %s %s in %.3f s: %s",
        result.name,
        verdict,
        result.duration_s,
        result.detail,
    )
