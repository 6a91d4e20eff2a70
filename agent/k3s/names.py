"""Where the controller's renderer (``controller/gitops/render.py``) puts a device's
objects. The agent never imports the controller, so the naming is repeated here;
``tests/agent/test_k3s.py`` checks that both give the same names."""

from __future__ import annotations

import hashlib
import re

CONFIGMAP = "edgefleet-desired"
FLUX_NAMESPACE = "flux-system"
ARGOCD_NAMESPACE = "argocd"
SERVICE = "edgefleet-runner"


def k8s_name(text: str, prefix: str = "edgefleet-") -> str:
    """A DNS-1123 label for ``text`` (``render.k8s_name``)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = f"{prefix}{slug}"
    if name != f"{prefix}{text}" or len(name) > 63:
        name = f"{name[:54].rstrip('-')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return name


def device_namespace(device_id: str) -> str:
    """The namespace the applier puts the device's folder in; also the name of its Flux
    ``Kustomization`` and Argo CD ``Application``."""
    return k8s_name(device_id)
