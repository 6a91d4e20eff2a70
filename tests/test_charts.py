"""The Helm charts in charts/: ``helm lint`` and ``helm template`` with every example values
file (charts/*/ci/), and what users rely on in the rendered objects: replicas and the refusal
of SQLite replicas, HTTPS probes, the migration hook, Secrets wired into env and never
elsewhere, the agent's host state directory, its RBAC rules exactly, and the NetworkPolicy
that keeps the unauthenticated runner port to its clients.

The real helm binary and the Kubernetes object schemas (node, deps/npm): ``make tools``."""

from __future__ import annotations

import base64
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.agent.k3s import names
from tests.support.k8stools import ROOT, documents, helm, validate

CHARTS = ROOT / "charts"
CONTROLLER = CHARTS / "edgefleet-controller"
AGENT = CHARTS / "edgefleet-agent"
VALUES = sorted((CHARTS / "edgefleet-controller" / "ci").glob("*.yaml")) + sorted(
    (CHARTS / "edgefleet-agent" / "ci").glob("*.yaml")
)
HOOK = "helm.sh/hook"


@cache
def _template(chart: Path, values: str | None = None, *sets: str) -> str:
    args = ["template", "r", str(chart), "--namespace", "edge"]
    if values:
        args += ["-f", str(chart / "ci" / values)]
    for s in sets:
        args += ["--set", s]
    done = helm(*args)
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout


def render(chart: Path, values: str | None = None, *sets: str) -> list[dict[str, Any]]:
    return documents(_template(chart, values, *sets))


def refused(chart: Path, *args: str) -> str:
    done = helm("template", "r", str(chart), *args)
    assert done.returncode != 0, "helm template should have refused"
    return done.stderr


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def pod(docs: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    return one(docs, kind)["spec"]["template"]["spec"]


# -- lint and schemas -------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES, ids=lambda p: f"{p.parents[1].name}/{p.name}")
def test_every_values_file_lints_and_renders_valid_kubernetes_objects(values: Path) -> None:
    chart = values.parents[1]
    linted = helm("lint", "--strict", str(chart), "-f", str(values))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    text = _template(chart, values.name)
    code, reports, stderr = validate(text, skip=("monitoring.coreos.com/v1",))
    assert code == 0, stderr
    checked = [r for r in reports if r["status"] == "valid"]
    assert len(checked) >= 3 and len(checked) == len(documents(text)) - len(
        [r for r in reports if r["status"] == "skipped"]
    )


def test_the_validator_refuses_a_broken_chart_object() -> None:
    deployment = one(render(CONTROLLER, "sqlite-values.yaml"), "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "three"
    del broken["spec"]["selector"]
    code, _, stderr = validate(yaml.safe_dump(broken))
    assert code == 1
    assert "Deployment r-edgefleet-controller" in stderr and "replicas must be integer" in stderr


@pytest.mark.parametrize("chart", [CONTROLLER, AGENT], ids=lambda p: p.name)
def test_every_top_level_value_is_documented(chart: Path) -> None:
    """Each top-level key has a comment above it, or follows one in the same paragraph."""
    lines = (chart / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if not line or line[0] in " #":
            continue
        j = i - 1
        while j >= 0 and lines[j] and lines[j][0] != "#":
            j -= 1
        if j < 0 or not lines[j]:
            undocumented.append(line.split(":")[0])
    assert not undocumented


# -- the controller -----------------------------------------------------------------------


def test_sqlite_is_one_replica_on_a_volume_and_more_are_refused() -> None:
    docs = render(CONTROLLER, "sqlite-values.yaml")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert (
        volumes["data"]["persistentVolumeClaim"]["claimName"]
        == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    )
    assert "EDGEFLEET_DATABASE_URL" not in env(pod(docs)["containers"][0])
    assert not [d for d in docs if d["kind"] == "Job"]  # the pod migrates its own SQLite

    stderr = refused(CONTROLLER, "--set", "replicas=2")
    assert "replicas is 2 but no PostgreSQL is configured: SQLite is one process" in stderr
    stderr = refused(CONTROLLER, "--set", "replicas=2", "--set", "database.existingSecret=db")
    assert "need one shared PKI" in stderr


def test_postgres_replicas_scale_without_a_volume_claim() -> None:
    docs = render(CONTROLLER, "postgres-replicas-values.yaml")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert "strategy" not in deployment["spec"]  # rolling updates over PostgreSQL
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert {"name": "data", "emptyDir": {}} in pod(docs)["volumes"]


def test_probes_are_https_on_healthz_and_readyz() -> None:
    container = pod(render(CONTROLLER, "postgres-replicas-values.yaml"))["containers"][0]
    assert container["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    paths = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["scheme"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": ("/healthz", "HTTPS"),
        "livenessProbe": ("/healthz", "HTTPS"),
        "readinessProbe": ("/readyz", "HTTPS"),
    }
    assert all(container[p]["httpGet"]["port"] == "https" for p in paths)
    assert env(container)["EDGEFLEET_HOST"] == "0.0.0.0"
    assert env(container)["EDGEFLEET_PORT"] == "8443"


def test_migration_job_is_a_pre_install_hook_that_runs_after_its_secrets() -> None:
    docs = render(CONTROLLER, "postgres-inline-values.yaml")
    job = one(docs, "Job")
    notes = job["metadata"]["annotations"]
    assert notes[HOOK] == "pre-install,pre-upgrade"
    # Not deleted on success: its log may hold the first admin's one-time credentials.
    assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation"
    spec = job["spec"]["template"]["spec"]
    assert spec["containers"][0]["command"] == ["edgefleet", "controller", "migrate"]
    assert spec["restartPolicy"] == "Never"
    # Its pod is not one the Service sends requests to.
    selector = one(docs, "Service")["spec"]["selector"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= labels.items()
    # Secrets it reads are hooks too, created before it (a lower weight).
    secrets = [d for d in docs if d["kind"] == "Secret"]
    assert len(secrets) == 3
    for secret in secrets:
        assert secret["metadata"]["annotations"][HOOK] == "pre-install,pre-upgrade"
        assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            notes["helm.sh/hook-weight"]
        )
    # Same settings as the Deployment: it migrates the database the replicas use.
    assert env(spec["containers"][0]) == env(pod(docs)["containers"][0])


def test_existing_secrets_are_wired_into_env_and_the_pki_files() -> None:
    docs = render(CONTROLLER, "postgres-replicas-values.yaml")
    assert not [d for d in docs if d["kind"] == "Secret"]  # all made beforehand
    container = pod(docs)["containers"][0]
    values = env(container)
    assert values["EDGEFLEET_DATABASE_URL"] == {
        "secretKeyRef": {"name": "edgefleet-db", "key": "url"}
    }
    for name, key in (("TOKEN", "token"), ("PASSWORD", "password")):
        assert values[f"EDGEFLEET_BOOTSTRAP_ADMIN_{name}"]["secretKeyRef"] == {
            "name": "edgefleet-admin",
            "key": key,
            "optional": True,
        }
    pki = {v["name"]: v for v in pod(docs)["volumes"]}["pki"]["secret"]
    assert pki["secretName"] == "edgefleet-pki"
    mounted = {
        m["mountPath"]: m["subPath"] for m in container["volumeMounts"] if m["name"] == "pki"
    }
    files = ["root", "server-ca", "device-ca", "registry-token"]
    expected = {
        f"/var/lib/edgefleet/pki/{f}.{ext}": f"{f}.{ext}" for f in files for ext in ("pem", "key")
    }
    expected["/var/lib/edgefleet/access-token.key"] = "access-token.key"
    assert mounted == expected
    # The keys' passphrase is a file from its own Secret, never an environment value.
    passphrase = {v["name"]: v for v in pod(docs)["volumes"]}["key-passphrase"]["secret"]
    assert passphrase["secretName"] == "edgefleet-pki-passphrase"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "key-passphrase"]
    assert mount["readOnly"] and "EDGEFLEET_KEY_PASSPHRASE" not in values
    assert values["EDGEFLEET_KEY_PASSPHRASE_FILE"] == mount["mountPath"] + "/passphrase"
    job = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]
    assert (
        env(job["containers"][0])["EDGEFLEET_KEY_PASSPHRASE_FILE"]
        == (values["EDGEFLEET_KEY_PASSPHRASE_FILE"])
    )
    assert values["EDGEFLEET_GITOPS_APPLIER"] == "argocd"
    assert json.loads(values["EDGEFLEET_TRUSTED_PROXIES"]) == ["10.0.0.0/8"]
    assert "fleet.example.com" in json.loads(values["EDGEFLEET_SERVER_NAMES"])
    assert values["EDGEFLEET_GITOPS_REMOTE"] == "https://git.example.com/fleet/{site}.git"


def test_secret_values_appear_only_in_secrets() -> None:
    source = yaml.safe_load((CONTROLLER / "ci" / "postgres-inline-values.yaml").read_text())
    secrets = [
        source["database"]["url"],
        source["bootstrapAdmin"]["token"],
        source["bootstrapAdmin"]["password"],
        *source["pki"]["files"].values(),
    ]
    docs = render(CONTROLLER, "postgres-inline-values.yaml")
    held = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert set(held) == {
        "r-edgefleet-controller-database",
        "r-edgefleet-controller-admin",
        "r-edgefleet-controller-pki",
    }
    stored = held["r-edgefleet-controller-pki"]["data"]
    assert base64.b64decode(stored["root.key"]).decode() == source["pki"]["files"]["root.key"]
    assert held["r-edgefleet-controller-database"]["stringData"]["database-url"] == secrets[0]
    values = env(pod(docs)["containers"][0])
    assert values["EDGEFLEET_DATABASE_URL"]["secretKeyRef"]["name"] in held
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for secret in secrets:
            for form in (secret, base64.b64encode(secret.encode()).decode()):
                assert form.strip()[:40] not in text, f"a secret value in {doc['kind']}"
    assert not [d for d in docs if d["kind"] == "ConfigMap"]


def test_servicemonitor_only_when_enabled() -> None:
    assert not [
        d for d in render(CONTROLLER, "sqlite-values.yaml") if d["kind"] == "ServiceMonitor"
    ]
    monitor = one(render(CONTROLLER, "postgres-replicas-values.yaml"), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0] | {"tlsConfig": None, "interval": None} == {
        "port": "https",
        "path": "/metrics",
        "scheme": "https",
        "interval": None,
        "tlsConfig": None,
    }
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    ingress = one(render(CONTROLLER, "postgres-replicas-values.yaml"), "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "fleet.example.com"


@pytest.mark.parametrize("values", ["sqlite-values.yaml", "postgres-inline-values.yaml"])
def test_controller_pods_run_as_non_root_with_resources(values: str) -> None:
    docs = render(CONTROLLER, values)
    pods = [pod(docs)] + [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Job"]
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("values", ["postgres-replicas-values.yaml", "postgres-inline-values.yaml"])
def test_controller_env_is_read_by_the_controllers_own_settings(
    values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every EDGEFLEET_* name the chart sets is a setting, and its value parses."""
    from edgefleet.controller.settings import Settings, load_settings

    given = env(pod(render(CONTROLLER, values))["containers"][0])
    unknown = [
        k for k in given if k.removeprefix("EDGEFLEET_").lower() not in Settings.model_fields
    ]
    assert not unknown
    for name in [k for k in os.environ if k.startswith("EDGEFLEET_")]:
        monkeypatch.delenv(name)
    for name, value in given.items():
        if isinstance(value, str):  # the rest come from Secrets
            monkeypatch.setenv(name, value)
    settings = load_settings()
    assert str(settings.data_dir) == "/var/lib/edgefleet" and settings.port == 8443
    assert settings.host == "0.0.0.0" and settings.gitops_writer is True
    assert "r-edgefleet-controller.edge.svc" in settings.server_names
    if values == "postgres-replicas-values.yaml":
        assert settings.trusted_proxies == ["10.0.0.0/8"]
        assert settings.gitops_applier == "argocd"
    else:
        assert settings.workers == 4 and settings.device_interval_seconds == 30


def test_agent_env_is_read_by_the_agents_own_settings() -> None:
    from edgefleet.agent.settings import load_settings

    given = env(pod(render(AGENT, "argocd-values.yaml"), "DaemonSet")["containers"][0])
    settings = load_settings({}, env=given)
    assert settings.mode == "k3s"
    assert str(settings.state_dir) == "/var/lib/edgefleet/agent"
    assert str(settings.registration) == "/etc/edgefleet/registration/registration.yaml"
    assert settings.service_port == 9000
    assert settings.service_selector == (
        "app.kubernetes.io/name=edgefleet-agent,app.kubernetes.io/instance=r"
    )
    known = {f"EDGEFLEET_AGENT_{name.upper()}" for name in vars(settings)}
    assert set(given) <= known


# -- the agent ----------------------------------------------------------------------------


def test_agent_daemonset_keeps_state_on_the_host_and_runs_k3s_mode() -> None:
    docs = render(AGENT, "argocd-values.yaml")
    spec = pod(docs, "DaemonSet")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"]["hostPath"] == {
        "path": "/var/lib/edgefleet/agent",
        "type": "DirectoryOrCreate",
    }
    container = spec["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == "/var/lib/edgefleet/agent"
    values = env(container)
    assert values["EDGEFLEET_AGENT_MODE"] == "k3s"
    assert values["EDGEFLEET_AGENT_STATE_DIR"] == "/var/lib/edgefleet/agent"
    assert values["EDGEFLEET_AGENT_SERVICE_PORT"] == "9000"
    registration = volumes["registration"]["secret"]["secretName"]
    assert registration == one(docs, "Secret")["metadata"]["name"]
    assert values["EDGEFLEET_AGENT_REGISTRATION"] == (f"{mounts['registration']}/registration.yaml")
    # The runner's Service selects exactly the agent pods.
    selector = dict(kv.split("=") for kv in values["EDGEFLEET_AGENT_SERVICE_SELECTOR"].split(","))
    assert selector == one(docs, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert all(not k.startswith("EDGEFLEET_") or k.startswith("EDGEFLEET_AGENT_") for k in values)


def test_agent_needs_its_registration_file() -> None:
    assert "needs its registration file" in refused(AGENT)
    docs = render(AGENT, "flux-values.yaml")
    assert not [d for d in docs if d["kind"] == "Secret"]
    volumes = {v["name"]: v for v in pod(docs, "DaemonSet")["volumes"]}
    assert volumes["registration"]["secret"]["secretName"] == "edgefleet-registration"


def _runner_rule(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The NetworkPolicy's one ingress rule, after checking it guards exactly the agent pods
    and that the gateway listens on the port it admits."""
    policy = one(docs, "NetworkPolicy")
    daemonset = one(docs, "DaemonSet")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == daemonset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    container = pod(docs, "DaemonSet")["containers"][0]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["runner"]
    assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
    assert env(container)["EDGEFLEET_AGENT_SERVICE_PORT"] == str(port)
    return rule


def test_agent_runner_port_admits_only_labelled_runner_clients_by_default() -> None:
    rule = _runner_rule(render(AGENT, "flux-values.yaml"))
    assert rule["ports"][0]["port"] == 8080
    assert rule["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"edgefleet.io/runner-client": "true"}},
        }
    ]


def test_agent_runner_policy_takes_the_peers_given() -> None:
    given = yaml.safe_load((AGENT / "ci" / "argocd-values.yaml").read_text())
    rule = _runner_rule(render(AGENT, "argocd-values.yaml"))
    assert rule["ports"][0]["port"] == 9000
    assert rule["from"] == given["runnerService"]["allowFrom"]


def test_agent_runner_policy_with_no_peers_admits_nobody_and_can_be_left_out() -> None:
    """An ingress rule without ``from`` would admit every source: none is written."""
    text = _template(AGENT, "flux-values.yaml", "runnerService.allowFrom=null")
    policy = one(documents(text), "NetworkPolicy")
    assert policy["spec"]["ingress"] == [] and policy["spec"]["policyTypes"] == ["Ingress"]
    code, _, stderr = validate(text)
    assert code == 0, stderr
    docs = render(AGENT, "flux-values.yaml", "runnerService.networkPolicy=false")
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]


def _rules(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    return {
        (d["kind"], d["metadata"].get("namespace", "*"), d["metadata"]["name"]): d["rules"]
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }


def _device_and_service_rules() -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    return {
        ("ClusterRole", "*", "r-edgefleet-agent-device"): [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [names.CONFIGMAP],
                "verbs": ["get"],
            },
            {
                "apiGroups": ["apps"],
                "resources": ["deployments", "statefulsets", "daemonsets"],
                "verbs": ["list"],
            },
        ],
        ("Role", "edge", "r-edgefleet-agent-runner-service"): [
            {"apiGroups": [""], "resources": ["services"], "verbs": ["create"]},
            {
                "apiGroups": [""],
                "resources": ["services"],
                "resourceNames": [names.SERVICE],
                "verbs": ["get", "patch"],
            },
        ],
    }


def test_agent_rbac_is_exactly_what_k3s_mode_calls_on_flux() -> None:
    docs = render(AGENT, "flux-values.yaml")
    assert _rules(docs) == _device_and_service_rules() | {
        ("Role", names.FLUX_NAMESPACE, "r-edgefleet-agent-applier"): [
            {
                "apiGroups": ["kustomize.toolkit.fluxcd.io"],
                "resources": ["kustomizations"],
                "verbs": ["get"],
            }
        ]
    }
    _bound_to_the_agent(docs)


def test_agent_rbac_is_exactly_what_k3s_mode_calls_on_argocd() -> None:
    docs = render(AGENT, "argocd-values.yaml")
    assert _rules(docs) == _device_and_service_rules() | {
        ("Role", names.ARGOCD_NAMESPACE, "r-edgefleet-agent-applier"): [
            {"apiGroups": ["argoproj.io"], "resources": ["applications"], "verbs": ["get"]}
        ]
    }
    _bound_to_the_agent(docs)


def _bound_to_the_agent(docs: list[dict[str, Any]]) -> None:
    roles = {
        (d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("Role", "ClusterRole")
    }
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert len(bindings) == len(roles)
    for binding in bindings:
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "r-edgefleet-agent", "namespace": "edge"}
        ]
        if binding["kind"] == "RoleBinding":
            role = one(docs, "Role", binding["roleRef"]["name"])
            assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
