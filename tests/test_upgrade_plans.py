"""A profile's ``os`` and ``k3s`` become system-upgrade-controller Plans in the device's
folder of the fleet repository (K3s devices only), which ``kubectl kustomize`` builds; a
direct profile or a version that is not one is refused with the field's JSON pointer."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.controller.gitops import render
from edgefleet.controller.gitops import sync as gitops
from edgefleet.controller.gitops.model import Device, FleetState, GitopsParams, Revision, Site
from tests.support.apiclient import Api
from tests.test_gitops import _checkout

DIGEST = "sha256:" + "0123456789abcdef" * 4
OS_IMAGE = "registry.example/edge/os-upgrade"
REMOTE = "https://git.example/fleet/{site}.git"
"""Where the sites pull from: without one no applier objects are rendered."""


def _spec(k3s: str = "v1.30.4+k3s1", os_version: str = "2026.1", **extra: Any) -> dict:
    return {
        "mode": "k3s",
        "models": [{"name": "detector", "reference": f"registry.example/det@{DIGEST}"}],
        "os": {"image": OS_IMAGE, "version": os_version},
        "k3s": {"version": k3s},
        **extra,
    }


def _state(*revisions: Revision, assign: int = 1, mode: str | None = "k3s") -> FleetState:
    return FleetState(
        [Site("shop")],
        [Device("cam-1", "shop", mode=mode), Device("cam-2", "shop", mode=mode)],
        list(revisions),
        {"cam-1": ("camera", assign)},
    )


def _files(state: FleetState, applier: str = "flux") -> dict[str, bytes]:
    return render.render(state, GitopsParams(applier=applier, remote=REMOTE))["shop"]


def _docs(data: bytes) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(data) if d]


def _by_role(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """The Plans by what they upgrade: os, server, agent."""
    out = {}
    for doc in _docs(files["devices/cam-1/upgrade/plans.yaml"]):
        name = doc["metadata"]["name"]
        role = next(r for r in ("os", "server", "agent") if name.endswith(r))
        out[role] = doc
    return out


def test_os_and_k3s_become_plans_for_the_devices_node() -> None:
    plans = _by_role(_files(_state(Revision("camera", 1, _spec()))))
    assert set(plans) == {"os", "server", "agent"}
    node = {"key": "edgefleet.io/device", "operator": "In", "values": ["edgefleet-cam-1"]}
    for plan in plans.values():
        assert (plan["apiVersion"], plan["kind"]) == ("upgrade.cattle.io/v1", "Plan")
        assert plan["metadata"]["namespace"] == "system-upgrade"
        assert plan["metadata"]["labels"]["edgefleet.io/revision"] == "1"
        assert plan["spec"]["serviceAccountName"] == "system-upgrade"
        assert plan["spec"]["concurrency"] == 1
        assert plan["spec"]["nodeSelector"]["matchExpressions"][0] == node
    assert plans["os"]["spec"]["version"] == "2026.1"
    assert plans["os"]["spec"]["upgrade"] == {"image": OS_IMAGE}
    server, agent = plans["server"]["spec"], plans["agent"]["spec"]
    assert server["version"] == agent["version"] == "v1.30.4+k3s1"
    assert server["upgrade"] == agent["upgrade"] == {"image": "rancher/k3s-upgrade"}
    control_plane = "node-role.kubernetes.io/control-plane"
    assert server["nodeSelector"]["matchExpressions"][1] == {
        "key": control_plane,
        "operator": "In",
        "values": ["true"],
    }
    assert agent["nodeSelector"]["matchExpressions"][1] == {
        "key": control_plane,
        "operator": "DoesNotExist",
    }
    assert agent["prepare"] == {
        "image": "rancher/k3s-upgrade",
        "args": ["prepare", plans["server"]["metadata"]["name"]],
    }


def test_the_plans_select_the_node_the_agent_reported_by_its_name() -> None:
    """A K3s agent reports its node (``spec.nodeName``) in its inventory: the Plans then
    select that node by the kubelet's hostname label, with nothing for anyone to label."""
    state = _state(Revision("camera", 1, _spec()))
    state.devices[0] = Device("cam-1", "shop", mode="k3s", node="k3s-node-7")
    plans = _by_role(_files(state))
    own = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["k3s-node-7"]}
    for plan in plans.values():
        assert plan["spec"]["nodeSelector"]["matchExpressions"][0] == own
    control_plane = plans["server"]["spec"]["nodeSelector"]["matchExpressions"][1]
    assert control_plane["key"] == "node-role.kubernetes.io/control-plane"


def test_the_agent_chart_tells_the_agent_its_node() -> None:
    from tests.test_charts import AGENT, env, pod
    from tests.test_charts import render as helm_template

    container = pod(helm_template(AGENT, "flux-values.yaml"), "DaemonSet")["containers"][0]
    node = env(container)["EDGEFLEET_AGENT_NODE_NAME"]
    assert node == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_the_node_an_enrolled_agent_reported_reaches_the_plans(api: Api) -> None:
    """From the enrolment's inventory through the database to the rendered Plans."""
    from edgefleet.controller.gitops import fleet

    api.site("shop")
    api.ok("POST", "/profiles", api.admin, json={"name": "camera", "spec": _spec()})
    token = api.token("shop", profile="camera")["token"]
    on_node = api.device(token, serial="SN-1", mode="k3s", node="k3s-node-7")
    unknown = api.device(token, serial="SN-2", mode="k3s")
    state = fleet.load(api.client.app.state.rt.engine, ["shop"])
    nodes = {d.id: d.node for d in state.devices}
    assert nodes == {on_node.id: "k3s-node-7", unknown.id: None}
    files = render.render(state, GitopsParams())["shop"]
    for device, key, value in (
        (on_node.id, "kubernetes.io/hostname", "k3s-node-7"),
        (unknown.id, "edgefleet.io/device", render.k8s_name(unknown.id)),
    ):
        [first, *_] = _docs(files[f"devices/{device}/upgrade/plans.yaml"])
        assert first["spec"]["nodeSelector"]["matchExpressions"][0] == {
            "key": key,
            "operator": "In",
            "values": [value],
        }


def test_a_release_channel_is_rendered_instead_of_a_version() -> None:
    channel = "https://update.k3s.io/v1-release/channels/stable"
    spec = {**_spec(), "k3s": {"channel": channel}}
    spec.pop("os")
    plans = _by_role(_files(_state(Revision("camera", 1, spec))))
    assert set(plans) == {"server", "agent"}
    assert (
        plans["server"]["spec"]["channel"] == channel and "version" not in plans["server"]["spec"]
    )


def test_a_revision_change_bumps_the_plans_and_touches_only_its_device() -> None:
    revisions = (
        Revision("camera", 1, _spec()),
        Revision("camera", 2, _spec(k3s="v1.31.1+k3s1", os_version="2026.2")),
    )
    before, after = _files(_state(*revisions)), _files(_state(*revisions, assign=2))
    old, new = _by_role(before), _by_role(after)
    assert [new[r]["spec"]["version"] for r in ("os", "server", "agent")] == [
        "2026.2",
        "v1.31.1+k3s1",
        "v1.31.1+k3s1",
    ]
    assert {p["metadata"]["labels"]["edgefleet.io/revision"] for p in new.values()} == {"2"}
    assert {p["metadata"]["name"] for p in old.values()} == {
        p["metadata"]["name"] for p in new.values()
    }  # the same Plans, changed: the upgrade controller applies the new version
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert changed == [
        "devices/cam-1/desired.yaml",
        "devices/cam-1/upgrade/plans.yaml",
    ]


def test_flux_applies_the_plans_without_target_namespace_and_argocd_lists_them() -> None:
    state = _state(Revision("camera", 1, _spec()))
    flux = _files(state, "flux")
    assert b"upgrade" not in flux["devices/cam-1/kustomization.yaml"]
    kustomizations = [
        d for d in _docs(flux["appliers/flux/cam-1.yaml"]) if d["kind"] == "Kustomization"
    ]
    device, upgrade = sorted(kustomizations, key=lambda d: len(d["metadata"]["name"]))
    assert device["spec"]["targetNamespace"] == "edgefleet-cam-1"
    assert upgrade["spec"]["path"] == "./devices/cam-1/upgrade"
    assert "targetNamespace" not in upgrade["spec"]
    assert upgrade["spec"]["sourceRef"] == device["spec"]["sourceRef"]
    argocd = _files(state, "argocd")
    resources = yaml.safe_load(argocd["devices/cam-1/kustomization.yaml"])["resources"]
    assert "upgrade" in resources


def test_no_plans_for_a_direct_device_a_profile_without_them_or_no_profile() -> None:
    plain = {k: v for k, v in _spec().items() if k not in ("os", "k3s")}
    for state in (
        _state(Revision("camera", 1, _spec()), mode="direct"),
        _state(Revision("camera", 1, plain)),
    ):
        files = _files(state)
        assert not [p for p in files if "/upgrade/" in p]
        for doc in render.documents(files.values()):
            assert doc["kind"] != "Plan"
    files = _files(_state(Revision("camera", 1, _spec())))
    assert not [p for p in files if p.startswith("devices/cam-2/upgrade/")]  # unassigned
    flux = _docs(_files(_state(Revision("camera", 1, plain)))["appliers/flux/cam-1.yaml"])
    assert [d["kind"] for d in flux] == ["Namespace", "GitRepository", "Kustomization"]


# -- kubectl kustomize ---------------------------------------------------------------------


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found:
        return found
    message = "needs kubectl (with kustomize): apt install kubectl (`make system-deps`)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _build(kubectl: str, folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("applier", ["flux", "argocd"])
def test_kubectl_kustomize_builds_the_device_folder_with_its_plans(
    tmp_path: Path, applier: str
) -> None:
    kubectl = _kubectl()
    root = tmp_path / "gitops"
    state = _state(Revision("camera", 1, _spec()))
    gitops.sync(root, GitopsParams(applier=applier), state, "alice", "os and k3s")
    tree = _checkout(root / "shop.git", "main", tmp_path / "tree")
    device = _build(kubectl, tree / "devices" / "cam-1")
    upgrade = _build(kubectl, tree / "devices" / "cam-1" / "upgrade")
    assert [d["kind"] for d in upgrade] == ["Plan", "Plan", "Plan"]
    assert {d["metadata"]["namespace"] for d in upgrade} == {"system-upgrade"}
    plans_in_device = [d for d in device if d["kind"] == "Plan"]
    if applier == "argocd":  # Argo CD keeps the namespace each document sets
        assert plans_in_device == upgrade
    else:  # Flux applies upgrade/ with its own Kustomization
        assert plans_in_device == []
    assert next(d for d in device if d["kind"] == "ConfigMap")["data"]["revision"] == "1"


# -- the schema, through the API -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"k3s": {"version": "1.30"}}, "/k3s/version", "is not a K3s release"),
        ({"k3s": {"version": "v1.30.4"}}, "/k3s/version", "e.g. v1.30.4+k3s1"),
        ({"os": {"image": OS_IMAGE, "version": "2026 1"}}, "/os/version", "not an image tag"),
        ({"os": {"image": f"{OS_IMAGE}:1", "version": "1"}}, "/os/image", "no tag"),
        ({"k3s": {}}, "/k3s", "exactly one of 'version'"),
        (
            {"mode": "direct", "k3s": {"version": "v1.30.4+k3s1"}},
            "/k3s",
            "only a mode: k3s profile",
        ),
        ({"mode": "direct", "os": {"image": OS_IMAGE, "version": "1"}}, "/os", "mode: k3s"),
    ],
)
def test_a_bad_os_or_k3s_field_is_refused_with_its_pointer(
    api: Api, spec: dict[str, Any], path: str, reason: str
) -> None:
    r = api.call("POST", "/profiles", api.admin, json={"name": "edge", "spec": spec})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_profile"
    assert f"{path}: " in error["message"] and reason in error["message"], error["message"]


def test_a_k3s_profile_with_os_and_k3s_is_accepted(api: Api) -> None:
    spec = {"mode": "k3s", "os": {"image": OS_IMAGE, "version": "2026.1"}}
    spec["k3s"] = {"version": "v1.30.4+k3s1"}
    r = api.call("POST", "/profiles", api.admin, json={"name": "edge", "spec": spec})
    assert r.status_code in (200, 201), r.text
    assert api.ok("GET", "/profiles/edge", api.admin)["spec"]["k3s"] == spec["k3s"]
