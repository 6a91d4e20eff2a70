"""The real ``kubernetes`` client behind K3s mode (``agent/k3s/api.py``), against a loopback
HTTP server that answers as the Kubernetes API server does (no API server runs on these
machines; the kind/k3d suite is the test against a real one). What is checked is what
the client sends (method, path, content type, bearer token, body) and what it makes of
the answers (the package's models, None for 404, a ClusterError naming the call)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

try:
    from kubernetes.client import Configuration
except ImportError:  # pragma: no cover - depends on the environment
    _MESSAGE = "needs the kubernetes package: pip install -e '.[k3s]' (`make test` installs it)"
    if os.environ.get("CI"):
        raise RuntimeError(_MESSAGE) from None
    pytest.skip(_MESSAGE, allow_module_level=True)

from edgefleet.agent.k3s.api import ClusterApi, ClusterError
from edgefleet.agent.k3s.service import ensure_service

pytestmark = pytest.mark.k8s_models

NS = "edgefleet-dev-1"


class ApiServer:
    """Answers ``(method, path)`` from ``routes`` (status, JSON); 404 otherwise, in the
    API server's Status shape. Records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                server.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "authorization": self.headers.get("Authorization"),
                        "body": json.loads(body) if body else None,
                    }
                )
                status, doc = server.routes.get(
                    (self.command, self.path),
                    (404, {"kind": "Status", "status": "Failure", "reason": "NotFound"}),
                )
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def client(self) -> ClusterApi:
        config = Configuration(host=f"http://127.0.0.1:{self.httpd.server_address[1]}")
        config.api_key = {"BearerToken": "sa-token"}
        config.api_key_prefix = {"BearerToken": "Bearer"}
        return ClusterApi(config)


@pytest.fixture
def server() -> Iterator[ApiServer]:
    found = ApiServer()
    yield found
    found.httpd.shutdown()
    found.httpd.server_close()


def _meta(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": NS}


def test_the_configmap_is_read_into_the_packages_model_and_a_missing_one_is_none(
    server: ApiServer,
) -> None:
    path = f"/api/v1/namespaces/{NS}/configmaps/edgefleet-desired"
    server.routes[("GET", path)] = (
        200,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("x"), "data": {"a": "1"}},
    )
    api = server.client()
    found = api.config_map(NS, "edgefleet-desired")
    assert type(found).__name__ == "V1ConfigMap" and found.data == {"a": "1"}
    assert server.requests[0]["authorization"] == "Bearer sa-token"
    assert api.config_map(NS, "other") is None


def test_workloads_list_the_three_kinds_in_the_devices_namespace(server: ApiServer) -> None:
    labels = {"app": "web"}
    deployment = {
        "metadata": _meta("web"),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}},
        },
        "status": {"readyReplicas": 1},
    }
    for plural, items in (("deployments", [deployment]), ("statefulsets", []), ("daemonsets", [])):
        server.routes[("GET", f"/apis/apps/v1/namespaces/{NS}/{plural}")] = (
            200,
            {"items": items, "metadata": {}},
        )
    [found] = server.client().workloads(NS)
    assert type(found).__name__ == "V1Deployment"
    assert (found.spec.replicas, found.status.ready_replicas) == (2, 1)


def test_the_appliers_object_comes_back_as_a_dict(server: ApiServer) -> None:
    path = f"/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations/{NS}"
    server.routes[("GET", path)] = (200, {"status": {"lastAppliedRevision": "main@sha1:1"}})
    api = server.client()
    found = api.custom_object(
        "kustomize.toolkit.fluxcd.io", "v1", "flux-system", "kustomizations", NS
    )
    assert found == {"status": {"lastAppliedRevision": "main@sha1:1"}}
    assert api.custom_object("argoproj.io", "v1alpha1", "argocd", "applications", NS) is None


def test_the_runner_service_is_created_then_patched_as_a_strategic_merge(
    server: ApiServer,
) -> None:
    base = "/api/v1/namespaces/edgefleet-system/services"
    server.routes[("POST", base)] = (201, {"metadata": _meta("edgefleet-runner")})
    api = server.client()
    assert ensure_service(api, "edgefleet-system", {"app": "agent"}, 8080)
    create = server.requests[-1]
    assert (create["method"], create["content_type"]) == ("POST", "application/json")
    assert create["body"]["spec"]["selector"] == {"app": "agent"}
    assert create["body"]["spec"]["ports"][0]["port"] == 8080

    stale = {"metadata": _meta("edgefleet-runner"), "spec": {"selector": {"app": "old"}}}
    server.routes[("GET", f"{base}/edgefleet-runner")] = (200, stale)
    server.routes[("PATCH", f"{base}/edgefleet-runner")] = (200, stale)
    assert ensure_service(api, "edgefleet-system", {"app": "agent"}, 8080)
    patch = server.requests[-1]
    assert patch["method"] == "PATCH"
    assert patch["content_type"] == "application/strategic-merge-patch+json"
    assert patch["body"]["spec"]["selector"] == {"app": "agent"}


def test_a_refused_call_is_a_cluster_error_that_names_it(server: ApiServer) -> None:
    path = f"/apis/apps/v1/namespaces/{NS}/deployments"
    server.routes[("GET", path)] = (403, {"kind": "Status", "reason": "Forbidden"})
    with pytest.raises(ClusterError, match=f"list deployments in {NS}: 403"):
        server.client().workloads(NS)
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(ClusterError, match="get configmap"):
        server.client().config_map(NS, "edgefleet-desired")


def test_the_client_leaves_the_generated_api_classes_unloaded() -> None:
    """They are what made K3s mode's idle memory grow by a third."""
    code = (
        "import sys\n"
        "from kubernetes.client import Configuration\n"
        "from edgefleet.agent.k3s.api import ClusterApi\n"
        "ClusterApi(Configuration(host='http://127.0.0.1:9'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('kubernetes.client.api.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
