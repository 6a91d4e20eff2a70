"""The runner's Service in the agent's own namespace, selecting the agent pods.

The agent is a DaemonSet, so every node's agent writes the same Service; its
``internalTrafficPolicy: Local`` sends an application to the runner on its own node.
"""

from __future__ import annotations

from typing import Any

from edgefleet.agent.k3s.api import KubeApi
from edgefleet.agent.k3s.names import SERVICE
from edgefleet.errors import ConfigError

MANAGED = {"app.kubernetes.io/managed-by": "edgefleet", "app.kubernetes.io/component": "runner"}


def selector(text: str) -> dict[str, str]:
    """``k=v,k=v`` (the ``service_selector`` setting) -> labels."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() for p in pairs):
        raise ConfigError(f"service_selector {text!r} must be k=v[,k=v]: the agent pods' labels")
    return {k.strip(): v.strip() for k, v in pairs}


def service_body(labels: dict[str, str], port: int) -> Any:
    from kubernetes.client import V1ObjectMeta, V1Service, V1ServicePort, V1ServiceSpec

    return V1Service(
        api_version="v1",
        kind="Service",
        metadata=V1ObjectMeta(name=SERVICE, labels=dict(MANAGED)),
        spec=V1ServiceSpec(
            selector=labels,
            ports=[V1ServicePort(name="http", port=port, target_port=port, protocol="TCP")],
            internal_traffic_policy="Local",
        ),
    )


def ensure_service(api: KubeApi, namespace: str, labels: dict[str, str], port: int) -> bool:
    """Create the Service, or patch it where it differs; True if a call changed it."""
    body = service_body(labels, port)
    current = api.service(namespace, SERVICE)
    if current is None:
        api.create_service(namespace, body)
        return True
    spec = current.spec
    same_port = [(p.port, str(p.target_port)) for p in spec.ports or []] == [(port, str(port))]
    if spec.selector == labels and same_port and spec.internal_traffic_policy == "Local":
        return False
    api.patch_service(namespace, SERVICE, body)
    return True
