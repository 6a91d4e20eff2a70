"""Where the controller's renderer puts a device's objects (``edgefleet.k8snames``, shared
with it), and the runner's Service the agent keeps."""

from __future__ import annotations

from edgefleet.k8snames import ARGOCD_NAMESPACE, CONFIGMAP, FLUX_NAMESPACE, k8s_name

__all__ = [
    "ARGOCD_NAMESPACE",
    "CONFIGMAP",
    "FLUX_NAMESPACE",
    "SERVICE",
    "device_namespace",
    "k8s_name",
]

SERVICE = "edgefleet-runner"


def device_namespace(device_id: str) -> str:
    """The namespace the applier puts the device's folder in; also the name of its Flux
    ``Kustomization`` and Argo CD ``Application``."""
    return k8s_name(device_id)
