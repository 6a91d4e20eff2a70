"""The site's Flux or Argo CD status of the device's folder, for the report: has it
applied it, and is what it applied healthy? (Workload readiness is a health check:
``agent/health/workloads.py``.)"""

from __future__ import annotations

from typing import Any

from edgefleet.wire import MAX_TEXT_CHARS, GitopsStatus

FLUX = ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
ARGOCD = ("argoproj.io", "v1alpha1", "applications")


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def flux_status(kustomization: dict[str, Any]) -> GitopsStatus:
    """A Flux ``Kustomization``: synced when Ready and the last applied revision is the
    last attempted one; healthy by its Healthy condition (with health checks) or Ready."""
    status = kustomization.get("status", {}) or {}
    ready = _condition(kustomization, "Ready")
    healthy = _condition(kustomization, "Healthy") or ready
    applied = status.get("lastAppliedRevision", "") or ""
    attempted = status.get("lastAttemptedRevision", applied) or ""
    return GitopsStatus(
        applier="flux",
        synced=ready.get("status") == "True" and applied == attempted and bool(applied),
        healthy=healthy.get("status") == "True",
        revision=applied[:256],
        message=(ready.get("message") or "")[:MAX_TEXT_CHARS],
    )


def argocd_status(application: dict[str, Any]) -> GitopsStatus:
    """An Argo CD ``Application``: its sync status and health status."""
    status = application.get("status", {}) or {}
    sync, health = status.get("sync", {}) or {}, status.get("health", {}) or {}
    revision = sync.get("revision") or next(iter(sync.get("revisions") or []), "")
    messages = [c.get("message", "") for c in status.get("conditions", []) or []]
    operation = (status.get("operationState") or {}).get("message", "")
    message = "; ".join(m for m in (*messages, operation, health.get("message", "")) if m)
    return GitopsStatus(
        applier="argocd",
        synced=sync.get("status") == "Synced",
        healthy=health.get("status") == "Healthy",
        revision=str(revision)[:256],
        message=message[:MAX_TEXT_CHARS],
    )
