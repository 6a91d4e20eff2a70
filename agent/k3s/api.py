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
from urllib.parse import quote

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
    """:class:`KubeApi` over the ``kubernetes`` package's ``ApiClient``, by path.

    The generated ``CoreV1Api``/``AppsV1Api`` classes are not used: their modules alone
    would add about 26 MB to the agent's idle memory for six calls."""

    def __init__(self, configuration: Any | None = None) -> None:
        """The in-cluster config (service account token and CA), or ``configuration``
        (a ``kubernetes.client.Configuration``: another API server, as in the tests)."""
        from kubernetes import client, config

        if configuration is None:
            try:
                config.load_incluster_config()
            except config.ConfigException as exc:
                raise ClusterError(f"not running in a Kubernetes pod: {exc}") from exc
        self._client = client.ApiClient(configuration)

    def _call(
        self,
        what: str,
        method: str,
        path: str,
        response_type: str | None,
        body: Any = None,
        content_type: str | None = None,
        missing_ok: bool = False,
    ) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = self._client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self._client.call_api(*request, _request_timeout=15)
            response.read()
            return self._client.response_deserialize(response, {"2XX": response_type}).data
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise ClusterError(f"{what}: {exc.status} {exc.reason}") from exc
        except HTTPError as exc:
            raise ClusterError(f"{what}: {exc}") from exc

    def config_map(self, namespace: str, name: str) -> Any | None:
        return self._call(
            f"get configmap {namespace}/{name}",
            "GET",
            f"/api/v1/namespaces/{_seg(namespace)}/configmaps/{_seg(name)}",
            "V1ConfigMap",
            missing_ok=True,
        )

    def workloads(self, namespace: str) -> list[Any]:
        found: list[Any] = []
        for plural, kind in (
            ("deployments", "V1DeploymentList"),
            ("statefulsets", "V1StatefulSetList"),
            ("daemonsets", "V1DaemonSetList"),
        ):
            path = f"/apis/apps/v1/namespaces/{_seg(namespace)}/{plural}"
            found.extend(self._call(f"list {plural} in {namespace}", "GET", path, kind).items)
        return found

    def custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        path = f"/apis/{group}/{version}/namespaces/{_seg(namespace)}/{plural}/{_seg(name)}"
        return self._call(  # type: ignore[no-any-return]
            f"get {plural}.{group} {namespace}/{name}", "GET", path, "object", missing_ok=True
        )

    def service(self, namespace: str, name: str) -> Any | None:
        return self._call(
            f"get service {namespace}/{name}",
            "GET",
            f"/api/v1/namespaces/{_seg(namespace)}/services/{_seg(name)}",
            "V1Service",
            missing_ok=True,
        )

    def create_service(self, namespace: str, body: Any) -> None:
        self._call(
            f"create service {namespace}/{body.metadata.name}",
            "POST",
            f"/api/v1/namespaces/{_seg(namespace)}/services",
            "V1Service",
            body=body,
            content_type="application/json",
        )

    def patch_service(self, namespace: str, name: str, body: Any) -> None:
        """A strategic merge patch of the whole object: ports merge by port number."""
        self._call(
            f"patch service {namespace}/{name}",
            "PATCH",
            f"/api/v1/namespaces/{_seg(namespace)}/services/{_seg(name)}",
            "V1Service",
            body=body,
            content_type="application/strategic-merge-patch+json",
        )


def _seg(text: str) -> str:
    """One path segment (names are DNS labels, but a path is never built from raw text)."""
    return quote(text, safe="")
