"""Readiness of the workloads a revision's manifests made (K3s mode): every Deployment,
StatefulSet and DaemonSet in the device's namespace has observed its latest spec and
has all its replicas updated and ready.

Takes the ``kubernetes`` package's models (``V1Deployment`` ...) by their attributes
and imports nothing from it, so this stays with the other checks in the daemon.
"""

from __future__ import annotations

from typing import Any

from edgefleet.agent.health.result import CheckResult

DETAIL_CHARS = 2048


def not_ready(workload: Any) -> str | None:
    """Why a workload is not ready, or None."""
    kind = type(workload).__name__.removeprefix("V1")
    meta, spec, status = workload.metadata, workload.spec, workload.status
    name = f"{kind} {meta.name}"
    if status is None:
        return f"{name}: no status yet"
    if (status.observed_generation or 0) < (meta.generation or 0):
        return f"{name}: generation {meta.generation} not observed yet"
    if kind == "DaemonSet":
        want = status.desired_number_scheduled or 0
        ready, updated = status.number_ready or 0, status.updated_number_scheduled or 0
    else:
        want = 1 if spec.replicas is None else spec.replicas
        ready, updated = status.ready_replicas or 0, status.updated_replicas or 0
    if ready < want or updated < want:
        return f"{name}: {ready}/{want} ready, {updated}/{want} updated"
    return None


def workloads_ready(workloads: list[Any]) -> CheckResult:
    """One check for all of them: a failed one names every workload not ready."""
    waiting = sorted(why for w in workloads if (why := not_ready(w)) is not None)
    if waiting:
        detail = "not ready: " + "; ".join(waiting)
        return CheckResult("workloads", False, detail[:DETAIL_CHARS], evidence={"waiting": waiting})
    return CheckResult("workloads", True, f"{len(workloads)} workload(s) ready")
