"""The Kubernetes path end to end on k3d: one k3d cluster for the controller (the
``edgefleet-controller`` chart, SQLite) and one per simulated site, each with its own
Flux (or, in the second run, Argo CD) and the ``edgefleet-agent`` chart (the agent in K3s
mode, a DaemonSet). Then: zero-touch enrolment of every site's node, a model rollout in
two waves (one device, then the rest) and a rollback of that rollout.

What it needs: a Docker engine, ``k3d``, ``kubectl``, ``helm``, ``flux`` (the Flux CLI),
``git``, and network access (k3s, Flux and Argo CD pull their own images and manifests).
Where one is missing the whole module skips with one line; it lives outside the
``testpaths`` of ``make test`` and CI never runs it. Run it with::

    .venv/bin/pytest -q e2e/k3d          # about 10 minutes on a laptop

The images are built with Docker from the same Containerfiles (``BASE=python:3.11-slim``)
and imported into the clusters (nothing pushed anywhere). The fleet repositories go
through a Git server on the host (``gitserver.py``); models through a k3d registry that
the clusters and the host share (no token authentication there: that path is covered by
``make e2e-podman`` and tests/test_models_e2e.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from e2e.k3d.gitserver import GitServer
from tests.support.onnxmodels import affine
from tests.support.processes import EDGEFLEET, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("docker", "k3d", "kubectl", "helm", "flux", "git")
SITES = ("site-a", "site-b")
AGENT_IMAGE = "edgefleet/agent:e2e"
CONTROLLER_IMAGE = "edgefleet/controller:e2e"
NODE_PORT = 30443
REGISTRY_PORT = 5111
ARGOCD_MANIFEST = "https://raw.githubusercontent.com/argoproj/argo-cd/stable/manifests/install.yaml"


def _missing() -> str | None:
    if shutil.which("docker") is None:
        return "no Docker engine (no docker command)"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode:
        return "no Docker engine (docker info failed)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


REASON = _missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"kind/k3d suite: {REASON}")


def sh(*args: str, input: str | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        args, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def kubectl(cluster: str, *args: str, input: str | None = None) -> str:
    return sh("kubectl", "--context", f"k3d-{cluster}", *args, input=input)


# -- images, registry, Git -------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> None:
    """Both images from the repository's Containerfiles, on python:3.11-slim."""
    sh(str(ROOT / "images" / "wheels.sh"))
    for name, tag, extras in (
        ("agent", AGENT_IMAGE, "agent,k3s"),
        ("controller", CONTROLLER_IMAGE, "controller"),
    ):
        sh(
            "docker", "build", "-q", "--build-arg", "BASE=python:3.11-slim",
            "--build-arg", f"EXTRAS={extras}",
            "-f", str(ROOT / "images" / name / "Containerfile"), "-t", tag, str(ROOT),
        )  # fmt: skip


def install_controller(state: dict[str, Any], hub: str) -> None:
    repo, image_tag = CONTROLLER_IMAGE.split(":")
    values = {
        "image": {"repository": repo, "tag": image_tag, "pullPolicy": "Never"},
        "publicUrl": f"https://host.k3d.internal:{NODE_PORT}",
        "serverNames": ["host.k3d.internal", "localhost"],
        "workers": 1,
        "gitops": {"applier": state["applier"], "remote": state["git"] + "/{site}.git"},
        "extraEnv": [
            {"name": "EDGEFLEET_DEVICE_INTERVAL_SECONDS", "value": "2"},
            {"name": "EDGEFLEET_ROLLOUT_TICK_SECONDS", "value": "1"},
            {"name": "EDGEFLEET_REGISTRY_INSECURE", "value": json.dumps([state["registry_in"]])},
        ],
    }
    path = state["root"] / "controller-values.yaml"
    path.write_text(yaml.safe_dump(values))
    sh(
        "helm", "--kube-context", f"k3d-{hub}", "install", "edgefleet",
        str(ROOT / "charts" / "edgefleet-controller"), "-f", str(path), "--wait",
    )  # fmt: skip
    # The chart's Service is ClusterIP; the host and the sites reach the pod on a NodePort.
    kubectl(hub, "apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "edgefleet-e2e"},
        "spec": {
            "type": "NodePort",
            "selector": {"app.kubernetes.io/instance": "edgefleet"},
            "ports": [{"port": 8443, "targetPort": 8443, "nodePort": NODE_PORT}],
        },
    }))  # fmt: skip
    pod_log = kubectl(hub, "logs", "deploy/edgefleet-edgefleet-controller")
    state["token"] = re.search(r"(efo\.\S+)", pod_log).group(1)  # type: ignore[union-attr]
    ca = state["root"] / "root.pem"
    ca.write_text(
        kubectl(hub, "exec", "deploy/edgefleet-edgefleet-controller", "--",
                "cat", "/var/lib/edgefleet/controller/pki/root.pem")
    )  # fmt: skip
    state["ca"] = ca
    state["url"] = f"https://localhost:{NODE_PORT}"


def api(state: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=state["url"] + "/api/v1",
        verify=ssl.create_default_context(cafile=str(state["ca"])),
        headers={"authorization": f"Bearer {state['token']}"},
        timeout=30,
    )


def cli(state: dict[str, Any], *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(
        EDGEFLEET_URL=state["url"],
        EDGEFLEET_TOKEN=state["token"],
        EDGEFLEET_CA_FILE=str(state["ca"]),
    )
    done = subprocess.run([*EDGEFLEET, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# -- a site ----------------------------------------------------------------------------


def bootstrap(state: dict[str, Any], cluster: str, site: str) -> None:
    """The site's one hand-applied object: its applier watching its own repository's
    ``appliers/<applier>/`` folder, where the controller writes one entry per device."""
    url = f"{state['git']}/{site}.git"
    if state["applier"] == "flux":
        sh("flux", "--context", f"k3d-{cluster}", "install", timeout=600)
        docs = [
            {
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "GitRepository",
                "metadata": {"name": "edgefleet", "namespace": "flux-system"},
                "spec": {"interval": "10s", "url": url, "ref": {"branch": "main"}},
            },
            {
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                "kind": "Kustomization",
                "metadata": {"name": "edgefleet-appliers", "namespace": "flux-system"},
                "spec": {
                    "interval": "10s",
                    "path": "./appliers/flux",
                    "prune": True,
                    "sourceRef": {"kind": "GitRepository", "name": "edgefleet"},
                },
            },
        ]
    else:
        kubectl(cluster, "create", "namespace", "argocd")
        kubectl(cluster, "apply", "--server-side", "-n", "argocd", "-f", ARGOCD_MANIFEST)
        kubectl(cluster, "-n", "argocd", "rollout", "status", "deploy/argocd-repo-server")
        docs = [
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Application",
                "metadata": {"name": "edgefleet-appliers", "namespace": "argocd"},
                "spec": {
                    "project": "default",
                    "source": {"repoURL": url, "targetRevision": "main", "path": "appliers/argocd"},
                    "destination": {
                        "server": "https://kubernetes.default.svc",
                        "namespace": "argocd",
                    },
                    "syncPolicy": {"automated": {"prune": True}},
                },
            }
        ]
    kubectl(cluster, "apply", "-f", "-", input=yaml.safe_dump_all(docs))


def install_agent(state: dict[str, Any], cluster: str, registration: str) -> None:
    repo, image_tag = AGENT_IMAGE.split(":")
    values = {
        "image": {"repository": repo, "tag": image_tag, "pullPolicy": "Never"},
        "registration": {"content": registration},
        "applier": state["applier"],
    }
    path = state["root"] / f"agent-{cluster}.yaml"
    path.write_text(yaml.safe_dump(values))
    sh(
        "helm", "--kube-context", f"k3d-{cluster}", "install", "edgefleet-agent",
        str(ROOT / "charts" / "edgefleet-agent"), "-f", str(path),
        "--namespace", "edgefleet", "--create-namespace", "--wait",
    )  # fmt: skip


def push(state: dict[str, Any], seed: int, version: str) -> None:
    model = affine(state["root"] / f"v{version}.onnx", seed=seed)
    cli(state, "models", "push", str(model), "--name", "detector", "--version", version,
        "--registry", state["registry_out"], "--plain-http")  # fmt: skip


def profile(state: dict[str, Any], version: str, hold: bool) -> None:
    spec = {
        "mode": "k3s",
        "models": [{"name": "detector", "reference": f"{state['registry_in']}/detector:{version}"}],
    }
    with api(state) as c:
        body: dict[str, Any] = {"name": "vision", "spec": spec}
        if hold:
            body["hold"] = True
        r = c.post("/profiles", json=body)
        assert r.status_code in (200, 201), r.text


def on(state: dict[str, Any], revision: int) -> list[dict[str, Any]]:
    with api(state) as c:
        found = c.get("/devices").json()
    return [d for d in found if d["applied_revision"] == revision]


# -- the test --------------------------------------------------------------------------


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("applier", ["flux", "argocd"])
def test_sites_enrol_roll_out_in_two_waves_and_roll_back(
    applier: str, images: None, tmp_path: Path
) -> None:
    state: dict[str, Any] = {"applier": applier, "root": tmp_path}
    tag = uuid.uuid4().hex[:6]
    registry = f"ef-registry-{tag}"
    clusters: list[str] = []
    try:
        with GitServer(tmp_path / "git") as git:
            for site in SITES:
                git.create(site)
            sh("k3d", "registry", "create", registry, "--port", str(REGISTRY_PORT))
            state["registry_in"] = f"k3d-{registry}:{REGISTRY_PORT}"
            state["registry_out"] = f"localhost:{REGISTRY_PORT}"
            state["git"] = f"http://host.k3d.internal:{git.port}"
            hub = f"ef-hub-{tag}"
            sh("k3d", "cluster", "create", hub, "--wait", "--registry-use", state["registry_in"],
               "-p", f"{NODE_PORT}:{NODE_PORT}@server:0")  # fmt: skip
            clusters.append(hub)
            sh("k3d", "image", "import", CONTROLLER_IMAGE, "-c", hub)
            install_controller(state, hub)

            push(state, seed=1, version="1.0")
            profile(state, "1.0", hold=False)
            with api(state) as c:
                for site in SITES:
                    c.post("/sites", json={"name": site}).raise_for_status()

            # Zero touch: each site's agent enrols with the registration file it was
            # installed with, and runs revision 1 through its own applier.
            for site in SITES:
                cluster = f"ef-{site}-{tag}"
                sh("k3d", "cluster", "create", cluster, "--wait",
                   "--registry-use", state["registry_in"])  # fmt: skip
                clusters.append(cluster)
                sh("k3d", "image", "import", AGENT_IMAGE, "-c", cluster)
                bootstrap(state, cluster, site)
                with api(state) as c:
                    r = c.post("/tokens", json={"site": site, "profile": "vision"})
                    r.raise_for_status()
                install_agent(state, cluster, yaml.safe_dump(r.json()["registration"]))
            wait_for(lambda: len(on(state, 1)) == len(SITES), 600, "every site on revision 1", 5)

            # Two waves: one device, then the rest.
            push(state, seed=2, version="2.0")
            profile(state, "2.0", hold=True)
            with api(state) as c:
                r = c.post("/rollouts", json={
                    "profile": "vision", "revision": 2, "waves": "1,100%",
                    "bake_seconds": 10, "gates": {"max_failures": 0},
                    "update_timeout_seconds": 600,
                })  # fmt: skip
                assert r.status_code == 201, r.text
                rollout = r.json()["id"]

            def finished() -> dict[str, Any] | None:
                with api(state) as c:
                    found = c.get(f"/rollouts/{rollout}").json()
                return found if found["state"] in ("completed", "aborted", "rolled_back") else None

            done = wait_for(finished, 900, "the rollout to finish", 5)
            assert done["state"] == "completed", done
            assert [len(w["devices"]) for w in done["waves"]] == [1, len(SITES) - 1]
            assert len(on(state, 2)) == len(SITES)

            # Rollback: the operator takes the rollout back; every site returns to 1.
            with api(state) as c:
                c.post(f"/rollouts/{rollout}/rollback").raise_for_status()
            wait_for(lambda: len(on(state, 1)) == len(SITES), 600, "every site back on 1", 5)
    finally:
        for cluster in clusters:
            subprocess.run(["k3d", "cluster", "delete", cluster], check=False)
        subprocess.run(["k3d", "registry", "delete", registry], check=False)
