"""K3s mode's one object for the daemon: the desired state from the cluster, the
runner's Service and the gateway behind it, and what the status report adds (checks,
the applier's status).

A cluster call that fails, or a gateway that cannot listen, never stops the device's
loop: the controller still gets the report, with a failed ``k3s`` check that says which
step failed and why, and the step is tried again next cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.health.workloads import workloads_ready
from edgefleet.agent.k3s import names
from edgefleet.agent.k3s.api import ClusterApi, ClusterError, KubeApi, own_namespace
from edgefleet.agent.k3s.desired import desired_from, etag_of
from edgefleet.agent.k3s.gateway import Gateway, GatewayError
from edgefleet.agent.k3s.service import ensure_service, selector
from edgefleet.agent.k3s.status import ARGOCD, FLUX, argocd_status, flux_status
from edgefleet.agent.settings import Settings
from edgefleet.wire import MAX_TEXT_CHARS, CheckResult, DesiredState, GitopsStatus

log = logging.getLogger("edgefleet.agent")


class K3sBackend:
    def __init__(
        self,
        connect: Callable[[], KubeApi],
        namespace: Callable[[], str],
        labels: dict[str, str],
        port: int,
        socket_dir: Path | None = None,
        gateway_host: str = "0.0.0.0",
    ) -> None:
        """``socket_dir``: the runners' sockets, which the gateway on ``port`` relays to;
        None runs no gateway (the Service then has nothing behind it)."""
        self._connect = connect
        self._namespace = namespace
        self._api: KubeApi | None = None
        self.labels = labels
        self.port = port
        self.gateway = (
            Gateway(socket_dir, port, host=gateway_host) if socket_dir is not None else None
        )
        self._service_done = False
        self._problems: dict[str, str] = {}
        """Failed cluster calls of this cycle, by step: reported as a failed check."""

    @classmethod
    def from_settings(cls, settings: Settings) -> K3sBackend:
        """The client and namespace are made on first use, inside the daemon's loop."""
        return cls(
            ClusterApi,
            own_namespace,
            selector(settings.service_selector),
            settings.service_port,
            socket_dir=settings.sockets,
        )

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = self._connect()
        return self._api

    def _step(self, step: str, call: Callable[[], object]) -> object | None:
        try:
            result = call()
        except (ClusterError, GatewayError) as exc:
            if self._problems.get(step) != exc.message:
                log.warning("k3s %s: %s", step, exc.message)
            self._problems[step] = exc.message
            return None
        self._problems.pop(step, None)
        return result

    # -- the desired state --------------------------------------------------------

    def desired(self, device_id: str, etag: str | None) -> tuple[DesiredState | None, str | None]:
        """The ConfigMap's state, or None when unchanged (same data) or not readable."""
        found = self._step("desired", lambda: self._read_desired(device_id, etag))
        return found if isinstance(found, tuple) else (None, etag)

    def _read_desired(
        self, device_id: str, etag: str | None
    ) -> tuple[DesiredState | None, str | None]:
        namespace = names.device_namespace(device_id)
        configmap = self.api.config_map(namespace, names.CONFIGMAP)
        if configmap is None:
            raise ClusterError(
                f"no ConfigMap {namespace}/{names.CONFIGMAP} yet: the site's Flux or Argo CD "
                f"has not applied the device's folder (devices/{device_id}) of the fleet "
                "repository"
            )
        data = dict(configmap.data or {})
        new_etag = etag_of(data)
        if new_etag == etag:
            return None, etag
        return desired_from(data, device_id), new_etag

    # -- the cycle's other work ---------------------------------------------------

    def serve(self) -> None:
        """The runner's Service and the gateway behind it, once per process (each again
        after a failure). The gateway does not wait for the Service: pods can reach it by
        the pod's address while the API server is away."""
        gateway = self.gateway
        if gateway is not None and not gateway.listening:
            self._step("gateway", gateway.start)
        if self._service_done:
            return
        done = self._step(
            "service", lambda: ensure_service(self.api, self._namespace(), self.labels, self.port)
        )
        self._service_done = done is not None

    def close(self) -> None:
        """Stop the gateway: the daemon does when it stops."""
        if self.gateway is not None:
            self.gateway.close()

    def checks(self, device_id: str) -> list[CheckResult]:
        """Workload readiness, and a failed ``k3s`` check for every failed call."""
        namespace = names.device_namespace(device_id)
        workloads = self._step("workloads", lambda: self.api.workloads(namespace))
        out = []
        if isinstance(workloads, list):
            ready = workloads_ready(workloads)
            out.append(CheckResult(name=ready.name, ok=ready.ok, detail=ready.detail))
        if self._problems:
            detail = "; ".join(f"{k}: {v}" for k, v in sorted(self._problems.items()))
            out.append(CheckResult(name="k3s", ok=False, detail=detail[:MAX_TEXT_CHARS]))
        return out

    def gitops(self, device_id: str) -> GitopsStatus | None:
        """The Flux Kustomization's status, else the Argo CD Application's; None if
        neither exists (yet)."""
        name = names.device_namespace(device_id)

        def read() -> GitopsStatus | None:
            flux = self.api.custom_object(FLUX[0], FLUX[1], names.FLUX_NAMESPACE, FLUX[2], name)
            if flux is not None:
                return flux_status(flux)
            argo = self.api.custom_object(
                ARGOCD[0], ARGOCD[1], names.ARGOCD_NAMESPACE, ARGOCD[2], name
            )
            return argocd_status(argo) if argo is not None else None

        found = self._step("gitops", read)
        return found if isinstance(found, GitopsStatus) else None
