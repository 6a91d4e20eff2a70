"""The agent's K3s mode, on the ``kubernetes`` package's API models and a fake of the few
cluster calls it makes (``agent/k3s/api.py``'s ``KubeApi``). There is no API server here:
the real client is exercised only up to "not in a pod"; the kind/k3d suite runs it for real.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import yaml

from edgefleet.agent.daemon import Agent
from edgefleet.agent.state import Phase
from edgefleet.controller.gitops import render
from edgefleet.controller.gitops.model import Device, FleetState, GitopsParams, Revision, Site
from edgefleet.wire import Registration
from tests.agent.conftest import AgentThread, fast_settings, wait_until
from tests.agent.fakecontroller import FakeController

try:
    from kubernetes.client import (
        V1ConfigMap,
        V1DaemonSet,
        V1DaemonSetSpec,
        V1DaemonSetStatus,
        V1Deployment,
        V1DeploymentSpec,
        V1DeploymentStatus,
        V1LabelSelector,
        V1ObjectMeta,
        V1PodTemplateSpec,
        V1StatefulSet,
        V1StatefulSetSpec,
        V1StatefulSetStatus,
    )
except ImportError:  # pragma: no cover - depends on the environment
    _MESSAGE = "needs the kubernetes package: pip install -e '.[k3s]' (`make test` installs it)"
    if os.environ.get("CI"):
        raise RuntimeError(_MESSAGE) from None
    pytest.skip(_MESSAGE, allow_module_level=True)

from edgefleet.agent.health.workloads import workloads_ready
from edgefleet.agent.k3s import names
from edgefleet.agent.k3s.backend import K3sBackend
from edgefleet.agent.k3s.desired import desired_from
from edgefleet.agent.k3s.service import ensure_service, selector
from edgefleet.agent.k3s.status import argocd_status, flux_status

pytestmark = pytest.mark.k8s_models

DIGEST = "sha256:" + "ab" * 32
AGENT_NS = "edgefleet-system"
LABELS = {"app.kubernetes.io/name": "edgefleet-agent"}


class FakeKube:
    """The ``KubeApi`` calls, answered from dicts of API objects; records every call."""

    def __init__(self) -> None:
        self.config_maps: dict[tuple[str, str], Any] = {}
        self.workload_objects: dict[str, list[Any]] = {}
        self.custom: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str]] = []

    def config_map(self, namespace: str, name: str) -> Any | None:
        self.calls.append(("get configmap", f"{namespace}/{name}"))
        return self.config_maps.get((namespace, name))

    def workloads(self, namespace: str) -> list[Any]:
        self.calls.append(("list workloads", namespace))
        return list(self.workload_objects.get(namespace, []))

    def custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        self.calls.append((f"get {plural}.{group}/{version}", f"{namespace}/{name}"))
        return self.custom.get((plural, namespace, name))

    def service(self, namespace: str, name: str) -> Any | None:
        self.calls.append(("get service", f"{namespace}/{name}"))
        return self.services.get((namespace, name))

    def create_service(self, namespace: str, body: Any) -> None:
        self.calls.append(("create service", f"{namespace}/{body.metadata.name}"))
        self.services[(namespace, body.metadata.name)] = body

    def patch_service(self, namespace: str, name: str, body: Any) -> None:
        self.calls.append(("patch service", f"{namespace}/{name}"))
        self.services[(namespace, name)] = body


def _spec(revision: int) -> dict[str, Any]:
    return {
        "mode": "k3s",
        "models": [{"name": "detector", "reference": f"registry.example/det@{DIGEST}"}],
        "config": {"fps": 5 * revision},
        "policies": {
            "interval_seconds": 1,
            "health_deadline_seconds": 90,
            "health_checks": [{"type": "model_load"}],
        },
        "results": {"rate_per_second": 4, "retention_hours": 24},
    }


def _rendered_configmap(device_id: str, revision: int, spec: dict[str, Any]) -> V1ConfigMap:
    """The ConfigMap the controller renders into the device's folder, as the API returns it."""
    state = FleetState(
        sites=[Site("shop")],
        devices=[Device(device_id, "shop", mode="k3s")],
        revisions=[Revision("camera", revision, spec)],
        assignments={device_id: ("camera", revision)},
    )
    files = render.render(state, GitopsParams())["shop"]
    doc = yaml.safe_load(files[f"devices/{device_id}/desired.yaml"])
    return V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=V1ObjectMeta(name=doc["metadata"]["name"], namespace=names.k8s_name(device_id)),
        data=doc["data"],
    )


_SELECTOR = V1LabelSelector(match_labels={"app": "x"})
_TEMPLATE = V1PodTemplateSpec(metadata=V1ObjectMeta(labels={"app": "x"}))


def _deployment(name: str, want: int, ready: int, generation: int = 1, seen: int = 1):
    return V1Deployment(
        metadata=V1ObjectMeta(name=name, generation=generation),
        spec=V1DeploymentSpec(replicas=want, selector=_SELECTOR, template=_TEMPLATE),
        status=V1DeploymentStatus(
            observed_generation=seen, ready_replicas=ready, updated_replicas=ready
        ),
    )


# -- names and the desired state ---------------------------------------------------------


@pytest.mark.parametrize("device_id", ["cam-1", "Cam_1", "d" * 70, "dev.0001"])
def test_the_agent_names_the_device_namespace_as_the_renderer_does(device_id: str) -> None:
    assert names.k8s_name(device_id) == render.k8s_name(device_id)
    assert names.CONFIGMAP == render.CONFIGMAP
    assert (names.FLUX_NAMESPACE, names.ARGOCD_NAMESPACE) == (
        render.FLUX_NAMESPACE,
        render.ARGOCD_NAMESPACE,
    )


def test_the_rendered_configmap_is_the_desired_state_direct_mode_gets() -> None:
    configmap = _rendered_configmap("cam-1", 4, _spec(4))
    desired = desired_from(configmap.data, "cam-1")
    assert (desired.profile, desired.revision, desired.interval_seconds) == ("camera", 4, 1)
    assert [(m.name, m.digest) for m in desired.models] == [("detector", DIGEST)]
    assert desired.models[0].reference == f"registry.example/det@{DIGEST}"
    assert desired.config == {"fps": 20}
    assert desired.health is not None and desired.health.deadline_seconds == 90
    assert [c.type for c in desired.health.checks] == ["model_load"]
    assert (desired.results.rate_per_second, desired.results.retention_hours) == (4, 24)


def test_a_malformed_configmap_is_refused_with_the_key_that_is_wrong() -> None:
    from edgefleet.agent.k3s.api import ClusterError

    data = dict(_rendered_configmap("cam-1", 1, _spec(1)).data)
    data["models"] = "[not json"
    with pytest.raises(ClusterError, match="'models' is not JSON"):
        desired_from(data, "cam-1")


def test_unchanged_configmap_data_is_not_applied_twice() -> None:
    kube = FakeKube()
    ns = names.k8s_name("cam-1")
    kube.config_maps[(ns, names.CONFIGMAP)] = _rendered_configmap("cam-1", 2, _spec(2))
    backend = K3sBackend(lambda: kube, lambda: AGENT_NS, LABELS, 8080)
    desired, etag = backend.desired("cam-1", None)
    assert desired is not None and desired.revision == 2 and etag
    assert backend.desired("cam-1", etag) == (None, etag)
    kube.config_maps[(ns, names.CONFIGMAP)] = _rendered_configmap("cam-1", 3, _spec(3))
    desired, new_etag = backend.desired("cam-1", etag)
    assert desired is not None and desired.revision == 3 and new_etag != etag


# -- workloads, appliers, the Service ------------------------------------------------------


def test_workloads_are_ready_only_when_every_replica_is_updated_and_ready() -> None:
    ready = [
        _deployment("api", 2, 2),
        V1StatefulSet(
            metadata=V1ObjectMeta(name="db", generation=3),
            spec=V1StatefulSetSpec(
                replicas=1, selector=_SELECTOR, service_name="db", template=_TEMPLATE
            ),
            status=V1StatefulSetStatus(
                replicas=1, observed_generation=3, ready_replicas=1, updated_replicas=1
            ),
        ),
        V1DaemonSet(
            metadata=V1ObjectMeta(name="camera", generation=1),
            spec=V1DaemonSetSpec(selector=_SELECTOR, template=_TEMPLATE),
            status=V1DaemonSetStatus(
                current_number_scheduled=3,
                desired_number_scheduled=3,
                number_misscheduled=0,
                number_ready=3,
                updated_number_scheduled=3,
                observed_generation=1,
            ),
        ),
    ]
    assert workloads_ready(ready).ok
    assert workloads_ready(ready).detail == "3 workload(s) ready"
    waiting = [*ready, _deployment("web", 3, 1), _deployment("old", 1, 1, generation=2, seen=1)]
    result = workloads_ready(waiting)
    assert not result.ok
    assert result.detail == (
        "not ready: Deployment old: generation 2 not observed yet; "
        "Deployment web: 1/3 ready, 1/3 updated"
    )


def test_flux_kustomization_status_is_synced_and_healthy_only_when_applied_and_ready() -> None:
    good = {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "status": {
            "lastAppliedRevision": "main@sha1:abc",
            "lastAttemptedRevision": "main@sha1:abc",
            "conditions": [
                {"type": "Ready", "status": "True", "message": "Applied revision: main@sha1:abc"},
                {"type": "Healthy", "status": "True", "message": "Health check passed"},
            ],
        },
    }
    status = flux_status(good)
    assert (status.applier, status.synced, status.healthy) == ("flux", True, True)
    assert status.revision == "main@sha1:abc" and "Applied" in status.message
    failing = json.loads(json.dumps(good))
    failing["status"]["lastAttemptedRevision"] = "main@sha1:def"
    failing["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "message": "kustomize build failed"},
        {"type": "Healthy", "status": "False"},
    ]
    status = flux_status(failing)
    assert (status.synced, status.healthy, status.revision) == (False, False, "main@sha1:abc")
    assert status.message == "kustomize build failed"
    assert flux_status({}).synced is False


def test_argocd_application_status_reads_sync_and_health() -> None:
    app = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "status": {
            "sync": {"status": "OutOfSync", "revisions": ["abc123", "1.2.0"]},
            "health": {"status": "Degraded", "message": "Deployment api: 0/2 ready"},
            "conditions": [{"type": "SyncError", "message": "one or more objects failed"}],
        },
    }
    status = argocd_status(app)
    assert (status.applier, status.synced, status.healthy) == ("argocd", False, False)
    assert status.revision == "abc123"
    assert status.message == "one or more objects failed; Deployment api: 0/2 ready"
    app["status"] = {
        "sync": {"status": "Synced", "revision": "abc123"},
        "health": {"status": "Healthy"},
    }
    assert (argocd_status(app).synced, argocd_status(app).healthy) == (True, True)


def test_the_runner_service_is_created_once_and_patched_when_it_differs() -> None:
    kube = FakeKube()
    assert ensure_service(kube, AGENT_NS, LABELS, 8080)
    service = kube.services[(AGENT_NS, names.SERVICE)]
    assert service.spec.selector == LABELS and service.spec.internal_traffic_policy == "Local"
    assert [(p.port, p.target_port) for p in service.spec.ports] == [(8080, 8080)]
    assert not ensure_service(kube, AGENT_NS, LABELS, 8080)  # same: no write
    assert ensure_service(kube, AGENT_NS, {"app": "other"}, 8080)
    writes = [c for c in kube.calls if c[0] != "get service"]
    assert writes == [
        ("create service", f"{AGENT_NS}/{names.SERVICE}"),
        ("patch service", f"{AGENT_NS}/{names.SERVICE}"),
    ]


def test_a_service_selector_setting_that_is_not_labels_is_refused() -> None:
    from edgefleet.errors import ConfigError

    assert selector("a=b, c=d") == {"a": "b", "c": "d"}
    with pytest.raises(ConfigError, match="k=v"):
        selector("just-a-name")


# -- the daemon in K3s mode ----------------------------------------------------------------


def _k3s_agent(fake: FakeController, state_dir, kube: Any) -> AgentThread:
    fake.interval_seconds = 1
    backend = K3sBackend(lambda: kube, lambda: AGENT_NS, LABELS, 8080)
    settings = fast_settings(state_dir, mode="k3s", node_name="node-a")
    reg = Registration.model_validate(fake.registration())
    return AgentThread(Agent(settings, reg, k3s=backend)).start()


def test_a_k3s_agent_follows_the_configmap_and_reports_workloads_and_flux(
    fake: FakeController, state_dir
) -> None:
    kube = FakeKube()
    agent = _k3s_agent(fake, state_dir, kube)
    try:
        wait_until(lambda: agent.state.device_id is not None, what="enrolled")
        device_id = agent.state.device_id
        ns = names.k8s_name(device_id)
        spec = {**_spec(5), "models": []}  # no model to pull: the ConfigMap's state only
        kube.config_maps[(ns, names.CONFIGMAP)] = _rendered_configmap(device_id, 5, spec)
        kube.workload_objects[ns] = [_deployment("inference", 2, 1)]
        kube.custom[("kustomizations", "flux-system", ns)] = {
            "status": {
                "lastAppliedRevision": "main@sha1:1234",
                "conditions": [{"type": "Ready", "status": "True", "message": "Applied"}],
            }
        }
        wait_until(lambda: agent.state.applied_revision == 5, what="revision 5 from the ConfigMap")

        def last():
            statuses = fake.devices[device_id].statuses
            return statuses[-1] if statuses else None

        wait_until(lambda: last() is not None and last().gitops is not None, what="a gitops status")
        report = last()
        assert report.gitops.applier == "flux" and report.gitops.synced
        assert report.gitops.revision == "main@sha1:1234"
        assert not report.health.ok
        [check] = [c for c in report.health.checks if c.name == "workloads"]
        assert check.detail == "not ready: Deployment inference: 1/2 ready, 1/2 updated"
        kube.workload_objects[ns] = [_deployment("inference", 2, 2)]
        wait_until(lambda: last().health.ok, what="healthy once the workload is ready")
        # The device API's desired state is read once, for what Git does not carry (the
        # trust bundle, update retries), and not again while its ETag stands.
        assert fake.count("GET", "/desired") == 1
        assert ("create service", f"{AGENT_NS}/{names.SERVICE}") in kube.calls
        assert agent.state.phase == Phase.ready
        inventory = fake.devices[device_id].statuses[0].inventory
        assert (inventory.mode, inventory.node) == ("k3s", "node-a")  # the Plans select it
    finally:
        agent.stop()


def test_a_k3s_agent_without_its_configmap_still_reports_and_says_why(
    fake: FakeController, state_dir
) -> None:
    agent = _k3s_agent(fake, state_dir, FakeKube())
    try:
        wait_until(lambda: agent.state.device_id is not None, what="enrolled")
        statuses = fake.devices[agent.state.device_id].statuses
        wait_until(lambda: any(s.health.checks for s in statuses), what="a status with checks")
        [check] = [c for c in statuses[-1].health.checks if c.name == "k3s"]
        assert "no ConfigMap" in check.detail and "has not applied" in check.detail
        assert statuses[-1].gitops is None and agent.state.applied_revision is None
    finally:
        agent.stop()


def test_outside_a_pod_the_real_client_says_so_in_the_report(
    fake: FakeController, state_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ``kubernetes`` client, not the fake: with no service account it cannot
    connect, and the report carries its reason instead of the loop stopping."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    fake.interval_seconds = 1
    settings = fast_settings(state_dir, mode="k3s")
    reg = Registration.model_validate(fake.registration())
    agent = AgentThread(Agent(settings, reg)).start()
    try:
        wait_until(lambda: agent.state.device_id is not None, what="enrolled")
        statuses = fake.devices[agent.state.device_id].statuses
        wait_until(lambda: any(s.health.checks for s in statuses), what="a status with checks")
        [check] = [c for c in statuses[-1].health.checks if c.name == "k3s"]
        assert "not running in a Kubernetes pod" in check.detail
    finally:
        agent.stop()
