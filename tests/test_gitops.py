"""The fleet repository, on real Git repositories: layout that ``kubectl kustomize`` builds
offline, one commit per change, none without one, one repository
per site (or one for the fleet), no secrets, pushes to a remote."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from edgefleet.controller.gitops import render, repository
from edgefleet.controller.gitops import sync as gitops
from edgefleet.controller.gitops.model import Device, FleetState, GitopsParams, Revision, Site
from edgefleet.controller.gitops.repository import Repository
from tests.support.git import git as _git

DIGEST = "sha256:" + "0123456789abcdef" * 4
KUBECTL = shutil.which("kubectl")


def _spec(n: int) -> dict:
    return {
        "description": f"camera r{n}",
        "mode": "k3s",
        "models": [{"name": "detector", "reference": f"registry.example/det@{DIGEST}"}],
        "applications": [
            {
                "name": "inference",
                "helm": {
                    "repository": "https://charts.example/edge",
                    "chart": "inference",
                    "version": f"1.{n}.0",
                    "values": {"threshold": 0.5, "labels": ["a b", "c"]},
                },
            },
            {
                "name": "collector",
                "kustomize": {
                    "repository": "https://git.example/edge/collector.git",
                    "path": "deploy/edge",
                    "ref": "main",
                },
            },
        ],
        "config": {"fps": 10 * n, "note": "two words"},
        "policies": {"interval_seconds": 30},
        "labels": {"tier": "edge"},
    }


def _state() -> FleetState:
    revisions = [Revision("camera", 1, _spec(1)), Revision("camera", 2, _spec(2))]
    devices = [
        Device("cam-a1", "shop-a", {"row": "1"}, "k3s"),
        Device("cam-a2", "shop-a", {}, "k3s"),
        Device("pi-a3", "shop-a", {}, "direct"),
        Device("cam-b1", "shop-b", {}, None),  # mode from the revision: k3s
        Device("new-b2", "shop-b", {}, "k3s"),  # no profile yet
    ]
    assignments = {
        "cam-a1": ("camera", 1),
        "cam-a2": ("camera", 2),
        "pi-a3": ("camera", 1),
        "cam-b1": ("camera", 2),
    }
    return FleetState(
        [Site("shop-a"), Site("shop-b"), Site("empty")], devices, revisions, assignments
    )


def _checkout(repo: Path, rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", f"--git-dir={repo}", "archive", rev], capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _forget() -> None:
    """A fresh process: no memoized renders, no open writers."""
    for fn in (render._device_folder, render._device_files, render._applier_file):
        fn.cache_clear()
    repository._blob_ids.clear()
    repository._tree_ids.clear()
    gitops._open.clear()


def _remotes(tmp_path: Path) -> str:
    """Bare repositories standing in for the Git server the sites pull from; its URL
    template (``gitops_remote``)."""
    remotes = tmp_path / "remote"
    for site in ("shop-a", "shop-b", "empty"):
        subprocess.run(["git", "init", "-q", "--bare", str(remotes / f"{site}.git")], check=True)
    return f"file://{remotes}/{{site}}.git"


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl (with kustomize): apt install kubectl")
@pytest.mark.parametrize("applier", ["flux", "argocd"])
def test_every_device_folder_builds_with_kubectl_kustomize(tmp_path: Path, applier: str) -> None:
    root, remote = tmp_path / "gitops", _remotes(tmp_path)
    gitops.sync(root, GitopsParams(applier=applier, remote=remote), _state(), "alice", "first")
    for site, ids in {
        "shop-a": ["cam-a1", "cam-a2", "pi-a3"],
        "shop-b": ["cam-b1", "new-b2"],
    }.items():
        tree = _checkout(root / f"{site}.git", "main", tmp_path / f"{site}-tree")
        for device_id in ids:
            built = subprocess.run(
                [KUBECTL, "kustomize", str(tree / "devices" / device_id)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            docs = list(yaml.safe_load_all(built))
            kinds = sorted(d["kind"] for d in docs)
            desired = next(d for d in docs if d["kind"] == "ConfigMap")
            assert desired["metadata"]["name"] == "edgefleet-desired"
            if device_id == "new-b2":
                assert kinds == ["ConfigMap"] and desired["data"]["revision"] == "0"
                continue
            assert json.loads(desired["data"]["models"])[0]["digest"] == DIGEST
            if applier == "flux":  # the chart stays a HelmRelease: never inflated here
                assert kinds == [
                    "ConfigMap",
                    "GitRepository",
                    "HelmRelease",
                    "HelmRepository",
                    "Kustomization",
                ]
            else:  # Argo CD carries the applications as sources of the Application
                assert kinds == ["ConfigMap"]
        appliers = tree / "appliers" / applier
        have = sorted(p.stem for p in appliers.glob("*.yaml")) if appliers.exists() else []
        assert have == sorted(i for i in ids if i != "pi-a3")  # direct mode: no applier
        for device_id in have:
            docs = list(yaml.safe_load_all((appliers / f"{device_id}.yaml").read_text()))
            if applier == "flux":
                kust = next(d for d in docs if d["kind"] == "Kustomization")
                assert kust["spec"]["path"] == f"./devices/{device_id}"
                source = next(d for d in docs if d["kind"] == "GitRepository")
                assert source["spec"]["url"] == remote.format(site=site)
            else:
                (application,) = docs
                assert application["kind"] == "Application"
                sources = application["spec"]["sources"]
                assert sources[0]["path"] == f"devices/{device_id}"
                if device_id != "new-b2":
                    assert {s.get("chart") for s in sources} >= {"inference"}
                    assert "deploy/edge" in {s.get("path") for s in sources}


def test_same_state_renders_the_same_bytes_and_makes_no_commit(tmp_path: Path) -> None:
    params = GitopsParams()
    first = render.render(_state(), params)
    _forget()
    assert render.render(_state(), params) == first
    root = tmp_path / "gitops"
    commits = gitops.sync(root, params, _state(), "alice", "first")
    assert all(commits.values()) and set(commits) == {"shop-a", "shop-b", "empty"}
    assert not any(gitops.sync(root, params, _state(), "alice", "again").values())
    _forget()  # a restarted controller reads the trees from Git and still finds no change
    assert not any(gitops.sync(root, params, _state(), "bob", "restart").values())
    other = tmp_path / "other"
    gitops.sync(other, params, _state(), "carol", "elsewhere")
    for rev in ("main^{tree}", "main:devices"):  # same state, same trees (appliers aside:
        # they name the root path the sites pull from)
        site = "empty" if rev == "main^{tree}" else "shop-a"
        assert _git(root / f"{site}.git", "rev-parse", rev) == _git(
            other / f"{site}.git", "rev-parse", rev
        )
    for site in commits:
        assert _git(root / f"{site}.git", "rev-list", "--count", "main").strip() == "1"


def test_one_assignment_change_is_one_commit_touching_only_that_device(tmp_path: Path) -> None:
    root, params, state = tmp_path / "gitops", GitopsParams(applier="argocd"), _state()
    gitops.sync(root, params, state, "alice", "first")
    state.assignments["cam-a1"] = ("camera", 2)
    commits = gitops.sync(root, params, state, "Bob Ops <bob@example.com>", "canary wave 1")
    changed = {site: c for site, c in commits.items() if c}
    assert list(changed) == ["shop-a"]
    repo = root / "shop-a.git"
    paths = _git(repo, "diff", "--name-only", "main~1", "main").split()
    assert paths and all(
        p.startswith("devices/cam-a1/") or p == "appliers/argocd/cam-a1.yaml" for p in paths
    )
    author, committer, subject, body = _git(
        repo, "log", "-1", "--format=%an <%ae>%x00%cn%x00%s%x00%b"
    ).split("\x00")
    assert author == "Bob Ops <bob@example.com>" and committer == "Edgefleet"
    assert subject == "Update 1 device (cam-a1)"
    assert "Why: canary wave 1" in body


def test_fsck_strict_is_clean_after_packs_and_loose_objects(tmp_path: Path) -> None:
    root, params, state = tmp_path / "gitops", GitopsParams(), _state()
    gitops.sync(root, params, state, "alice", "first")  # a pack per repository
    for n in (2, 1, 2):
        state.assignments["cam-b1"] = ("camera", n)
        gitops.sync(root, params, state, "alice", f"to {n}")  # a few loose objects
    for site in ("shop-a", "shop-b", "empty"):
        result = subprocess.run(
            ["git", f"--git-dir={root / f'{site}.git'}", "fsck", "--strict", "--full"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_each_site_repository_holds_only_its_own_devices(tmp_path: Path) -> None:
    root = tmp_path / "gitops"
    gitops.sync(root, GitopsParams(), _state(), "alice", "first")
    listing = {
        site: set(_git(root / f"{site}.git", "ls-tree", "--name-only", "main", "devices/").split())
        for site in ("shop-a", "shop-b")
    }
    assert listing == {
        "shop-a": {"devices/cam-a1", "devices/cam-a2", "devices/pi-a3"},
        "shop-b": {"devices/cam-b1", "devices/new-b2"},
    }
    assert _git(root / "empty.git", "ls-tree", "main") == ""


def test_the_fleet_setting_puts_every_site_in_one_repository(tmp_path: Path) -> None:
    root = tmp_path / "gitops"
    commits = gitops.sync(root, GitopsParams(per_site=False), _state(), "alice", "first")
    assert list(commits) == ["fleet"] and sorted(p.name for p in root.iterdir()) == ["fleet.git"]
    names = _git(root / "fleet.git", "ls-tree", "--name-only", "main", "devices/").split()
    assert len(names) == 5


def test_no_secret_is_ever_rendered(tmp_path: Path) -> None:
    files = render.render(_state(), GitopsParams())
    docs = render.documents(data for repo in files.values() for data in repo.values())
    assert docs and not [d for d in docs if d.get("kind") == "Secret"]
    with pytest.raises(render.RenderError, match="Secret"):
        render._dump({"apiVersion": "v1", "kind": "Secret", "data": {}})
    leaky = _state()
    spec = _spec(3)
    spec["applications"][1]["kustomize"]["repository"] = "https://u:hunter2@git.example/x.git"
    leaky.revisions.append(Revision("camera", 3, spec))
    leaky.assignments["cam-a1"] = ("camera", 3)
    with pytest.raises(render.RenderError, match="password"):
        render.render(leaky, GitopsParams())


def test_models_must_be_pinned_by_digest() -> None:
    state = _state()
    spec = _spec(3)
    spec["models"] = [{"name": "detector", "reference": "registry.example/det:latest"}]
    state.revisions.append(Revision("camera", 3, spec))
    state.assignments["cam-a1"] = ("camera", 3)
    with pytest.raises(render.RenderError, match="digest"):
        render.render(state, GitopsParams())


def test_without_a_remote_the_repositories_carry_no_applier_objects(tmp_path: Path) -> None:
    """The controller's disk is nobody's Git server: a GitRepository or Application naming
    it would be refused by Flux's schema and reach nothing. The device folders are there,
    and the objects appear once ``gitops_remote`` names a server the sites reach."""
    files = render.render(_state(), GitopsParams())
    assert files["shop-a"] and not [p for f in files.values() for p in f if "appliers/" in p]
    assert "devices/cam-a1/desired.yaml" in files["shop-a"]
    with pytest.raises(render.RenderError, match="gitops_remote"):
        render.repository_url("shop-a", GitopsParams())
    remote = GitopsParams(remote="https://git.example/fleet/{site}.git")
    assert "appliers/flux/cam-a1.yaml" in render.render(_state(), remote)["shop-a"]


def test_new_commits_are_pushed_to_the_remote_template(tmp_path: Path) -> None:
    remotes = tmp_path / "remote"
    params = GitopsParams(remote=_remotes(tmp_path))
    root, state = tmp_path / "gitops", _state()
    commits = gitops.sync(root, params, state, "alice", "first")
    state.assignments["new-b2"] = ("camera", 1)
    commits.update({k: v for k, v in gitops.sync(root, params, state, "alice", "b2").items() if v})
    for site, commit in commits.items():
        assert _git(remotes / f"{site}.git", "rev-parse", "main").strip() == commit
    applier = _git(root / "shop-b.git", "show", "main:appliers/flux/new-b2.yaml")
    assert f"url: file://{remotes}/shop-b.git" in applier  # sites pull what was pushed


def test_params_come_from_the_controller_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from edgefleet.controller.gitops.model import repository_root
    from edgefleet.controller.settings import load_settings

    monkeypatch.setenv("EDGEFLEET_GITOPS_APPLIER", "argocd")
    monkeypatch.setenv("EDGEFLEET_GITOPS_REPOSITORIES", "fleet")
    monkeypatch.setenv("EDGEFLEET_GITOPS_REMOTE", "https://git.example/fleet/{site}.git")
    settings = load_settings(data_dir=tmp_path)
    params = GitopsParams.from_settings(settings)
    assert (params.applier, params.per_site, params.remote) == (
        "argocd",
        False,
        "https://git.example/fleet/{site}.git",
    )
    assert repository_root(settings) == tmp_path / "gitops"
    monkeypatch.setenv("EDGEFLEET_GITOPS_APPLIER", "helm")
    with pytest.raises(ValidationError, match="flux"):
        load_settings(data_dir=tmp_path)


def test_repository_refuses_a_branch_that_moved_under_it(tmp_path: Path) -> None:
    repo = Repository.ensure(tmp_path / "r.git")
    first = repo.write({"a.txt": b"one\n"}, "first", "alice")
    assert first and repo.write({"a.txt": b"one\n"}, "same", "alice") is None
    other = Repository(tmp_path / "r.git")
    second = other.write({"a.txt": b"two\n"}, "second", "bob")
    assert second and repo.head() == second
    with pytest.raises(repository.RepositoryError, match="moved under us"):
        repo._update_ref("0" * 40, first)
