"""The Kubernetes names the controller's renderer writes into the fleet repository and
the K3s-mode agent looks up in its cluster: defined once, so the two cannot drift (the
agent never imports the controller). Standard library only."""

from __future__ import annotations

import hashlib
import re

CONFIGMAP = "edgefleet-desired"
FLUX_NAMESPACE = "flux-system"
ARGOCD_NAMESPACE = "argocd"


def k8s_name(text: str, prefix: str = "edgefleet-") -> str:
    """A DNS-1123 label for ``text``; a hash keeps names unique when it had to change."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = f"{prefix}{slug}"
    if name != f"{prefix}{text}" or len(name) > 63:
        name = f"{name[:54].rstrip('-')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return name
