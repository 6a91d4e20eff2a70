"""The cluster calls K3s mode makes, as a Protocol (tests pass a fake), and the real
``kubernetes`` client behind it. These calls are all the agent's RBAC must allow:

    configmaps              get           in the device's namespace
    apps deployments,
    statefulsets,
    daemonsets              list          in the device's namespace
    kustomize.toolkit.fluxcd.io kustomizations  get  in flux-system
    argoproj.io applications                    get  in argocd
    services                get, create, patch   in the agent's own namespace
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from edgefleet.errors import EdgefleetError

SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ClusterError(EdgefleetError):
    """The Kubernetes API refused or failed a call; the message names the call."""

    default_code = "k3s"


class KubeApi(Protocol):
    """The few calls made; None where the object does not exist (404)."""

    def config_map(self, namespace: str, name: str) -> Any | None: ...

    def workloads(self, namespace: str) -> list[Any]: ...

    def custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any] | None: ...

    def service(self, namespace: str, name: str) -> Any | None: ...

    def create_service(self, namespace: str, body: Any) -> None: ...

    def patch_service(self, namespace: str, name: str, body: Any) -> None: ...


def own_namespace(path: Path = SERVICEACCOUNT_NAMESPACE) -> str:
    """The pod's namespace, from its service account (the chart mounts it)."""
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ClusterError(
            f"cannot read the pod's namespace from {path}: {exc.strerror or exc}; K3s mode "
            "runs in a pod with a service account (the edgefleet-agent chart)"
        ) from exc


class ClusterApi:
    """:class:`KubeApi` over the ``kubernetes`` package, with the in-cluster config."""

    def __init__(self) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException as exc:
            raise ClusterError(f"not running in a Kubernetes pod: {exc}") from exc
        api = client.ApiClient()
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._custom = client.CustomObjectsApi(api)

    def _call(self, what: str, call: Any, *args: Any, missing_ok: bool = False) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call(*args, _request_timeout=15)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise ClusterError(f"{what}: {exc.status} {exc.reason}") from exc
        except HTTPError as exc:
            raise ClusterError(f"{what}: {exc}") from exc

    def config_map(self, namespace: str, name: str) -> Any | None:
        return self._call(
            f"get configmap {namespace}/{name}",
            self._core.read_namespaced_config_map,
            name,
            namespace,
            missing_ok=True,
        )

    def workloads(self, namespace: str) -> list[Any]:
        found: list[Any] = []
        for kind, call in (
            ("deployments", self._apps.list_namespaced_deployment),
            ("statefulsets", self._apps.list_namespaced_stateful_set),
            ("daemonsets", self._apps.list_namespaced_daemon_set),
        ):
            found.extend(self._call(f"list {kind} in {namespace}", call, namespace).items)
        return found

    def custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        return self._call(  # type: ignore[no-any-return]
            f"get {plural}.{group} {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            name,
            missing_ok=True,
        )

    def service(self, namespace: str, name: str) -> Any | None:
        return self._call(
            f"get service {namespace}/{name}",
            self._core.read_namespaced_service,
            name,
            namespace,
            missing_ok=True,
        )

    def create_service(self, namespace: str, body: Any) -> None:
        self._call(
            f"create service {namespace}/{body.metadata.name}",
            self._core.create_namespaced_service,
            namespace,
            body,
        )

    def patch_service(self, namespace: str, name: str, body: Any) -> None:
        self._call(
            f"patch service {namespace}/{name}",
            self._core.patch_namespaced_service,
            name,
            namespace,
            body,
        )
