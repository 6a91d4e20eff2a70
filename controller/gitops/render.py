"""Fleet state -> files, per repository: pure, deterministic, no timestamps, no secrets.

Layout of one repository (a site's, or the fleet's)::

    devices/<device-id>/kustomization.yaml   what `kustomize build` of the device's path lists
    devices/<device-id>/desired.yaml         ConfigMap edgefleet-desired: revision, models, config
    devices/<device-id>/apps/<app>.yaml      Flux only: HelmRepository+HelmRelease, or
                                             GitRepository+Kustomization for a Kustomize app
    devices/<device-id>/upgrade/plans.yaml   k3s devices whose profile sets ``os``/``k3s``:
                                             system-upgrade-controller Plans (own kustomization)
    appliers/flux/<device-id>.yaml           Namespace + GitRepository + Kustomization (k3s devices)
    appliers/argocd/<device-id>.yaml         Application with the device path and its apps as
                                             sources (k3s devices)

A device's folder depends only on its revision, never on its id (the applier puts it in the
device's namespace), so devices on the same revision share one Git tree; only ``upgrade/``
names the device (its Plans select its node, in the ``system-upgrade`` namespace). Argo CD
keeps a namespace a document sets, so its device folder lists ``upgrade``; Flux's
``targetNamespace`` would move the Plans into the device's namespace, so Flux applies
``upgrade/`` with a Kustomization of its own, without one. Applications are
never inflated here: Helm charts stay HelmRelease/Argo CD Helm sources, Kustomize apps stay
Flux/Argo CD Git sources, so ``kubectl kustomize devices/<id>`` works offline.
Outputs are memoized: a revision is immutable, so its folder is rendered once per process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

from edgefleet.controller.gitops.model import Applier, FleetState, GitopsParams, Revision
from edgefleet.k8snames import ARGOCD_NAMESPACE, CONFIGMAP, FLUX_NAMESPACE, k8s_name

try:
    _Dumper: type = yaml.CSafeDumper
except AttributeError:  # PyYAML without libyaml: same output, slower
    _Dumper = yaml.SafeDumper

FLEET = "fleet"
MANAGED = {"app.kubernetes.io/managed-by": "edgefleet"}
UPGRADE_NAMESPACE = "system-upgrade"
UPGRADE_SERVICE_ACCOUNT = "system-upgrade"
K3S_UPGRADE_IMAGE = "rancher/k3s-upgrade"
NODE_LABEL = "edgefleet.io/device"
"""The label that marks a device's node (value: its namespace name, ``k8s_name(id)``)
when the agent has not reported its node: the Plans of a device upgrade that node only."""
HOSTNAME_LABEL = "kubernetes.io/hostname"
"""Set by the kubelet to the node's name: the Plans select the node the agent reported."""
_HEALTH_KEYS = ("health_checks", "health_deadline_seconds", "max_attempts")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CACHE = 1 << 17

Files = dict[str, bytes]


class RenderError(ValueError):
    """The state cannot be rendered safely (a secret, a credential, an unusable name)."""


# -- names ------------------------------------------------------------------------------


def repository_name(site: str, params: GitopsParams) -> str:
    """The repository a site's devices live in: the site's own, or the fleet's."""
    if not params.per_site:
        return FLEET
    name = quote(site, safe="-_.")
    return "%2E" + name[1:] if name.startswith(".") else name


def repository_url(name: str, params: GitopsParams) -> str:
    """What the appliers pull and where sync pushes: the remote template's URL."""
    if not params.remote:
        raise RenderError("no gitops_remote: the sites have no Git server to pull from")
    return params.remote.format(site=name)


def _check_id(device_id: str) -> None:
    if not _SAFE_ID.match(device_id) or device_id in (".", ".."):
        raise RenderError(f"device id {device_id!r} cannot name a folder in the fleet repository")


def _check_url(url: str, what: str) -> str:
    if urlsplit(url).password:
        raise RenderError(f"{what} {url!r} carries a password; no secrets go into Git")
    return url


# -- documents --------------------------------------------------------------------------


def _dump(*docs: dict[str, Any]) -> bytes:
    for doc in docs:
        if doc.get("kind") == "Secret":
            raise RenderError("refusing to render a Secret: no secrets go into Git")
    text = "---\n".join(
        yaml.dump(doc, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True)
        for doc in docs
    )
    return text.encode()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _models(spec: dict[str, Any]) -> list[dict[str, str]]:
    models = []
    for model in spec.get("models", []):
        reference = model["reference"]
        _, _, digest = reference.rpartition("@")
        if not digest.startswith("sha256:"):
            raise RenderError(f"model {model['name']!r} is not pinned by digest: {reference!r}")
        models.append({"name": model["name"], "reference": reference, "digest": digest})
    return models


def _desired(revision: Revision | None) -> bytes:
    spec = revision.spec if revision else {}
    data = {
        "profile": revision.profile if revision else "",
        "revision": str(revision.number if revision else 0),
        "models": _canonical(_models(spec)),
        "config": _canonical(spec.get("config", {})),
        "interval_seconds": str(spec.get("policies", {}).get("interval_seconds", "")),
        # what the K3s-mode agent reads instead of the device API (agent/k3s/desired.py)
        "health": _canonical(
            {k: v for k, v in spec.get("policies", {}).items() if k in _HEALTH_KEYS}
        ),
        "results": _canonical(spec.get("results", {})),
    }
    if "model_signatures" in spec:  # the keys are public: a site may read them
        data["model_signatures"] = _canonical(spec["model_signatures"])
    if "drift" in spec:  # only then: the ConfigMaps of profiles without it do not change
        data["drift"] = _canonical(spec["drift"])
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP, "labels": MANAGED},
        "data": data,
    }
    head = (
        f"# profile {revision.profile} revision {revision.number}\n"
        if revision
        else "# no profile\n"
    )
    return head.encode() + _dump(configmap)


def _flux_app(app: dict[str, Any], interval: str) -> bytes:
    name = app["name"]
    meta = {"name": name, "labels": MANAGED}
    if "helm" in app:
        helm = app["helm"]
        url = _check_url(helm["repository"], f"application {name}'s Helm repository")
        repo_spec: dict[str, Any] = {"interval": interval, "url": url}
        if url.startswith("oci://"):
            repo_spec["type"] = "oci"
        release_spec: dict[str, Any] = {
            "interval": interval,
            "chart": {
                "spec": {
                    "chart": helm["chart"],
                    "version": helm["version"],
                    "sourceRef": {"kind": "HelmRepository", "name": name},
                }
            },
        }
        if helm.get("values"):
            release_spec["values"] = helm["values"]
        return _dump(
            {
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "HelmRepository",
                "metadata": meta,
                "spec": repo_spec,
            },
            {
                "apiVersion": "helm.toolkit.fluxcd.io/v2",
                "kind": "HelmRelease",
                "metadata": meta,
                "spec": release_spec,
            },
        )
    source = app["kustomize"]
    url = _check_url(source["repository"], f"application {name}'s repository")
    return _dump(
        {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": meta,
            "spec": {"interval": interval, "url": url, "ref": _git_ref(source["ref"])},
        },
        {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": meta,
            "spec": {
                "interval": interval,
                "path": source["path"],
                "prune": True,
                "sourceRef": {"kind": "GitRepository", "name": name},
            },
        },
    )


def _git_ref(ref: str) -> dict[str, str]:
    """Flux's GitRepository ref: a full commit, a full ref name, else a branch or tag name."""
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return {"commit": ref}
    if ref.startswith("refs/"):
        return {"name": ref}
    if re.fullmatch(r"v?\d+(\.\d+)*([-+].*)?", ref):
        return {"tag": ref}
    return {"branch": ref}


@lru_cache(maxsize=_CACHE)
def _device_folder(
    key: tuple[str, int] | None,
    spec_json: str,
    applier: Applier,
    interval: str,
    upgrade: bool = False,
) -> tuple[tuple[str, bytes], ...]:
    """The files of a device folder, relative to it: a function of the revision only."""
    spec = json.loads(spec_json)
    revision = Revision(key[0], key[1], spec) if key else None
    files = {"desired.yaml": _desired(revision)}
    if applier == "flux":
        for app in spec.get("applications", []):
            files[f"apps/{app['name']}.yaml"] = _flux_app(app, interval)
    resources = sorted(files) + (["upgrade"] if upgrade and applier == "argocd" else [])
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }
    files["kustomization.yaml"] = _dump(kustomization)
    return tuple(sorted(files.items()))


# -- OS and K3s upgrades ---------------------------------------------------------------


def _plan(name: str, labels: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": name, "namespace": UPGRADE_NAMESPACE, "labels": labels},
        "spec": {"concurrency": 1, "serviceAccountName": UPGRADE_SERVICE_ACCOUNT, **spec},
    }


def _node(device_id: str, node: str | None, *role: dict[str, Any]) -> dict[str, Any]:
    own = (
        {"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}
        if node
        else {"key": NODE_LABEL, "operator": "In", "values": [k8s_name(device_id)]}
    )
    return {"matchExpressions": [own, *role]}


@lru_cache(maxsize=_CACHE)
def _upgrade_files(
    device_id: str, node: str | None, key: tuple[str, int], os_json: str, k3s_json: str
) -> tuple[tuple[str, bytes], ...]:
    """system-upgrade-controller Plans for the device's node (the one its agent reported,
    else the one labelled for it): the OS image, then K3s on a server node and (after the
    server plan) on an agent node."""
    labels = {**MANAGED, "edgefleet.io/revision": f"{key[1]}"}
    plans = []
    os_spec, k3s = json.loads(os_json), json.loads(k3s_json)
    if os_spec:
        plans.append(
            _plan(
                k8s_name(f"{device_id}-os"),
                labels,
                {
                    "version": os_spec["version"],
                    "nodeSelector": _node(device_id, node),
                    "cordon": True,
                    "upgrade": {"image": os_spec["image"]},
                },
            )
        )
    if k3s:
        release = {"version": k3s["version"]} if "version" in k3s else {"channel": k3s["channel"]}
        control_plane = "node-role.kubernetes.io/control-plane"
        server = k8s_name(f"{device_id}-k3s-server")
        plans.append(
            _plan(
                server,
                labels,
                {
                    **release,
                    "nodeSelector": _node(
                        device_id,
                        node,
                        {"key": control_plane, "operator": "In", "values": ["true"]},
                    ),
                    "cordon": True,
                    "upgrade": {"image": K3S_UPGRADE_IMAGE},
                },
            )
        )
        plans.append(
            _plan(
                k8s_name(f"{device_id}-k3s-agent"),
                labels,
                {
                    **release,
                    "nodeSelector": _node(
                        device_id, node, {"key": control_plane, "operator": "DoesNotExist"}
                    ),
                    "prepare": {"image": K3S_UPGRADE_IMAGE, "args": ["prepare", server]},
                    "drain": {"force": True},
                    "upgrade": {"image": K3S_UPGRADE_IMAGE},
                },
            )
        )
    head = f"# profile {key[0]} revision {key[1]}: OS and K3s of device {device_id}\n"
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["plans.yaml"],
    }
    prefix = f"devices/{device_id}/upgrade/"
    return (
        (prefix + "kustomization.yaml", _dump(kustomization)),
        (prefix + "plans.yaml", head.encode() + _dump(*plans)),
    )


@lru_cache(maxsize=_CACHE)
def _device_files(
    device_id: str, folder: tuple[tuple[str, bytes], ...]
) -> tuple[tuple[str, bytes], ...]:
    prefix = f"devices/{device_id}/"
    return tuple((prefix + rel, data) for rel, data in folder)


def _flux_applier(
    device_id: str, url: str, branch: str, interval: str, upgrade: bool = False
) -> bytes:
    name = k8s_name(device_id)
    meta = {"name": name, "namespace": FLUX_NAMESPACE, "labels": MANAGED}
    extra = []
    if upgrade:  # no targetNamespace: the Plans stay in system-upgrade
        upgrade_name = k8s_name(f"{device_id}-upgrade")
        extra.append(
            {
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                "kind": "Kustomization",
                "metadata": {**meta, "name": upgrade_name},
                "spec": {
                    "interval": interval,
                    "path": f"./devices/{device_id}/upgrade",
                    "prune": True,
                    "sourceRef": {"kind": "GitRepository", "name": name},
                },
            }
        )
    return _dump(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": MANAGED},
        },
        {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": meta,
            "spec": {"interval": interval, "url": url, "ref": {"branch": branch}},
        },
        {
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": meta,
            "spec": {
                "interval": interval,
                "path": f"./devices/{device_id}",
                "prune": True,
                "sourceRef": {"kind": "GitRepository", "name": name},
                "targetNamespace": name,
            },
        },
        *extra,
    )


def _argo_applier(device_id: str, url: str, branch: str, apps_json: str) -> bytes:
    name = k8s_name(device_id)
    sources: list[dict[str, Any]] = [
        {"repoURL": url, "path": f"devices/{device_id}", "targetRevision": branch}
    ]
    for app in json.loads(apps_json):
        if "helm" in app:
            helm = app["helm"]
            repo = _check_url(helm["repository"], f"application {app['name']}'s Helm repository")
            source: dict[str, Any] = {
                "repoURL": repo.removeprefix("oci://"),
                "chart": helm["chart"],
                "targetRevision": helm["version"],
                "helm": {"releaseName": app["name"]},
            }
            if helm.get("values"):
                source["helm"]["valuesObject"] = helm["values"]
        else:
            kust = app["kustomize"]
            source = {
                "repoURL": _check_url(
                    kust["repository"], f"application {app['name']}'s repository"
                ),
                "path": kust["path"],
                "targetRevision": kust["ref"],
            }
        sources.append(source)
    return _dump(
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": {"name": name, "namespace": ARGOCD_NAMESPACE, "labels": MANAGED},
            "spec": {
                "project": "default",
                "destination": {"server": "https://kubernetes.default.svc", "namespace": name},
                "sources": sources,
                "syncPolicy": {
                    "automated": {"prune": True, "selfHeal": True},
                    "syncOptions": ["CreateNamespace=true"],
                },
            },
        }
    )


@lru_cache(maxsize=_CACHE)
def _applier_file(
    device_id: str,
    applier: Applier,
    url: str,
    branch: str,
    interval: str,
    apps_json: str,
    upgrade: bool = False,
) -> tuple[str, bytes]:
    if applier == "flux":
        data = _flux_applier(device_id, url, branch, interval, upgrade)
        return f"appliers/flux/{device_id}.yaml", data
    return f"appliers/argocd/{device_id}.yaml", _argo_applier(device_id, url, branch, apps_json)


# -- the fleet --------------------------------------------------------------------------


def render(state: FleetState, params: GitopsParams) -> dict[str, Files]:
    """Every repository's files: ``{repository name: {path: bytes}}``.

    Every site gets a repository, even one without devices (its Flux then finds an empty
    path instead of an error). Same state and params, same bytes. The appliers' objects
    are written only with a remote (``gitops_remote``): without one the repositories
    live on the controller's disk, which no site's Flux or Argo CD can pull from.
    """
    revisions: dict[tuple[str, int], tuple[Revision, str, str]] = {}
    for rev in state.revisions:
        apps = _canonical(rev.spec.get("applications", []))
        revisions[rev.key] = (rev, _canonical(rev.spec), apps)
    out: dict[str, Files] = {repository_name(site.name, params): {} for site in state.sites}
    empty = _device_folder(None, "{}", params.applier, params.interval)
    for device in sorted(state.devices, key=lambda d: d.id):
        _check_id(device.id)
        repo = repository_name(device.site, params)
        files = out.setdefault(repo, {})
        key = state.assignments.get(device.id)
        entry = revisions.get(key) if key else None
        if key and entry is None:
            raise RenderError(f"device {device.id} is assigned {key}, which is not in the state")
        mode = device.mode or (entry[0].spec.get("mode") if entry else None) or "k3s"
        spec = entry[0].spec if entry else {}
        upgrade = mode == "k3s" and bool(spec.get("os") or spec.get("k3s"))
        folder = (
            _device_folder(key, entry[1], params.applier, params.interval, upgrade)
            if entry
            else empty
        )
        files.update(_device_files(device.id, folder))
        if upgrade and key:
            os_json, k3s_json = _canonical(spec.get("os", {})), _canonical(spec.get("k3s", {}))
            files.update(_upgrade_files(device.id, device.node, key, os_json, k3s_json))
        if mode == "k3s" and params.remote:
            url = repository_url(repo, params)
            path, data = _applier_file(
                device.id,
                params.applier,
                url,
                params.branch,
                params.interval,
                entry[2] if entry else "[]",
                upgrade,
            )
            files[path] = data
    return out


def documents(files: Iterable[bytes]) -> list[dict[str, Any]]:
    """Every YAML document in ``files`` (for checks: no Secret, names parse)."""
    return [doc for data in files for doc in yaml.safe_load_all(data) if doc]
