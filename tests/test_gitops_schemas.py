"""Every object the controller writes into the fleet repository validates against the Flux
and Argo CD schemas (the npm packages @kubernetes-models/flux-cd and argo-cd, run by node:
tests/support/validate_k8s.mjs), for every example profile in profiles/ and both appliers.

A real controller (in process, SQLite: the rendering does not depend on the database)
writes a real Git repository; the test reads it with git, as a site's Flux or Argo CD
would. Tools: ``make tools``."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from edgefleet.controller.settings import Settings, load_settings
from tests.support.apiclient import Api
from tests.support.k8stools import ROOT, documents, need_node, validate
from tests.support.processes import wait_for

PROFILES = sorted((ROOT / "profiles").glob("*.yaml"))
KUSTOMIZE_FILE = "kustomize.config.k8s.io/v1beta1"  # read by kustomize, not an API object
UPGRADE_PLAN = "upgrade.cattle.io/v1"  # system-upgrade-controller: no schema in the npm packages
UNCHECKED = (KUSTOMIZE_FILE, UPGRADE_PLAN)
REMOTE = "https://127.0.0.1:1/fleet/{site}.git"
"""Sites pull from a remote; without one no applier objects are written at all. Pushes to
this loopback port are refused at once and retried in the background; the local
repository holds every commit meanwhile."""


@pytest.fixture(params=["flux", "argocd"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The suite's controller settings on SQLite, with each applier in turn."""
    return load_settings(
        data_dir=tmp_path / "controller",
        gitops_applier=request.param,
        gitops_remote=REMOTE,
        gitops_debounce_seconds=0.1,
    )


def _apply_profile(api: Api, path: Path) -> str:
    """``edgefleet profiles apply FILE`` exactly as an operator runs it."""
    g = Globals("https://testserver", api.admin, None)
    g.transport = api.client._transport
    runner = CliRunner()
    out = runner.invoke(app, ["profiles", "apply", str(path), "-o", "json"], obj=g)
    assert out.exit_code == 0, out.output
    return yaml.safe_load(path.read_text())["name"]


def _devices(repo: Path) -> int:
    if not (repo / "refs" / "heads" / "main").exists():
        return 0
    listed = subprocess.run(
        ["git", f"--git-dir={repo}", "ls-tree", "--name-only", "main", "devices/"],
        capture_output=True,
        text=True,
    )
    return len(listed.stdout.split())


def _repository_objects(api: Api, settings: Settings) -> list[dict[str, Any]]:
    """One device per example profile, then every object in the site's repository."""
    need_node()
    api.site()
    for path in PROFILES:
        profile = _apply_profile(api, path)
        api.device(api.token(profile=profile)["token"])
    repo = settings.data_dir / "gitops" / "shop-1.git"
    wait_for(lambda: _devices(repo) == len(PROFILES), 10, "every device in the repository")
    archive = subprocess.run(
        ["git", f"--git-dir={repo}", "archive", "main"], capture_output=True, check=True
    ).stdout
    objects = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith((".yaml", ".yml", ".json")):
                text = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
                objects += documents(text)
    return objects


def test_every_object_written_for_every_example_profile_validates_and_a_broken_one_does_not(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    objects = _repository_objects(api, settings)
    code, reports, stderr = validate("\n---\n".join(json.dumps(o) for o in objects), skip=UNCHECKED)
    assert code == 0, stderr
    assert len(reports) == len(objects)
    kinds = Counter(
        o["kind"] for o, r in zip(objects, reports, strict=True) if r["status"] == "valid"
    )
    desired = len(PROFILES)  # one ConfigMap per device
    assert kinds["ConfigMap"] == desired
    if settings.gitops_applier == "flux":
        # Each K3s profile has a Helm and a Kustomize application, and each K3s device a
        # GitRepository + Kustomization applier of its own.
        for kind in ("HelmRepository", "HelmRelease", "GitRepository", "Kustomization"):
            assert kinds[kind] >= 2, kinds
        assert kinds["Application"] == 0
    else:
        k3s = [p for p in PROFILES if yaml.safe_load(p.read_text()).get("mode") == "k3s"]
        assert kinds["Application"] == len(k3s) >= 2, kinds
        assert kinds["HelmRelease"] == kinds["Kustomization"] == 0
    skipped = [r for r in reports if r["status"] == "skipped"]
    assert all(r["object"].startswith(UNCHECKED) for r in skipped)

    # The validator can fail: the same object, broken, is refused by name.
    kind = "HelmRelease" if settings.gitops_applier == "flux" else "Application"
    victim = next(o for o in objects if o["kind"] == kind)
    broken = json.loads(json.dumps(victim))
    if kind == "HelmRelease":
        del broken["spec"]["chart"]["spec"]["chart"]  # which chart to install
    else:
        del broken["spec"]["destination"]  # where to apply it
    code, reports, stderr = validate(json.dumps(broken))
    assert code == 1
    name = victim["metadata"]["name"]
    assert f"{kind} " in stderr and name in stderr and "must have required property" in stderr
    assert [r["status"] for r in reports] == ["invalid"]
