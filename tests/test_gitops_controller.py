"""The controller writes the fleet repositories as intent changes: one commit per operator
change, enrolments batched, restores that stick, failures retried and reported.

Real Git repositories in the controller's data directory, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.settings import Settings, load_settings
from tests.support.apiclient import Api
from tests.support.git import git as _git
from tests.support.processes import wait_for

DIGEST = "sha256:" + "cd" * 32
KUBECTL = shutil.which("kubectl")


def _spec(n: int, mode: str = "k3s") -> dict[str, Any]:
    return {
        "mode": mode,
        "models": [{"name": "detector", "reference": f"registry.example/det@{DIGEST}"}],
        "applications": [
            {
                "name": "inference",
                "helm": {
                    "repository": "https://charts.example/edge",
                    "chart": "inference",
                    "version": f"1.{n}.0",
                },
            }
        ],
        "config": {"fps": n},
    }


def _repo(settings: Settings, site: str = "shop-1") -> Path:
    return settings.data_dir / "gitops" / f"{site}.git"


def _count(repo: Path) -> int:
    return (
        int(_git(repo, "rev-list", "--count", "main")) if (repo / "refs/heads/main").exists() else 0
    )


def _desired(repo: Path, device_id: str, rev: str = "main") -> dict[str, str]:
    text = _git(repo, "show", f"{rev}:devices/{device_id}/desired.yaml")
    return next(d for d in yaml.safe_load_all(text) if d)["data"]


def _settled(api: Api) -> None:
    """Wait until the writer has nothing queued (enrolments are debounced)."""
    wait_for(lambda: api.ok("GET", "/gitops", api.admin)["pending"] == 0, 10, "the writer")


def _fleet(api: Api, n: int = 3) -> list[Any]:
    api.site()
    api.profile("vision", _spec(1))
    token = api.token(profile="vision")["token"]
    devices = [api.device(token) for _ in range(n)]
    _settled(api)
    return devices


def cli(api: Api, *args: str) -> Any:
    g = Globals("https://testserver", api.admin, None)
    g.transport = api.client._transport
    return CliRunner().invoke(app, list(args), obj=g, catch_exceptions=False)


def test_enrolments_in_a_burst_make_one_commit(tmp_path: Path, database_url: str | None) -> None:
    from fastapi.testclient import TestClient

    settings = load_settings(
        data_dir=tmp_path / "controller", database_url=database_url, gitops_debounce_seconds=3
    )
    prepared = prepare(settings)
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        api = Api(client, prepared.new_admin_token, prepared.controller_id)
        api.site()
        api.profile("vision", _spec(1))
        repo = _repo(settings)
        before = _count(repo)
        token = api.token(profile="vision")["token"]
        ids = sorted(api.enrol(token).json()["device_id"] for _ in range(4))
        _settled(api)
        listed = _git(repo, "ls-tree", "--name-only", "main", "devices/").split()
        assert listed == [f"devices/{i}" for i in ids]
        assert _count(repo) == before + 1
        subject, author = _git(repo, "log", "-1", "--format=%s%x00%an").strip().split("\x00")
        assert subject.startswith("Add 4 devices") and author == "enrolment"
        assert all(_desired(repo, i) == _desired(repo, ids[0]) for i in ids)
    client.app.state.rt.engine.dispose()


def test_assign_is_one_commit_touching_only_that_device(api: Api, settings: Settings) -> None:
    devices = _fleet(api)
    api.profile("clinic", _spec(7))
    repo = _repo(settings)
    before = _count(repo)
    out = api.ok("POST", f"/devices/{devices[0].id}/assign", api.admin, json={"profile": "clinic"})
    commit = out["gitops"]["commits"]["shop-1"]
    assert commit and _git(repo, "rev-parse", "main").strip() == commit
    assert _count(repo) == before + 1
    paths = _git(repo, "diff", "--name-only", "main~1", "main").split()
    assert paths and all(devices[0].id in p for p in paths), paths
    assert _desired(repo, devices[0].id)["profile"] == "clinic"
    assert _desired(repo, devices[1].id)["profile"] == "vision"
    body = _git(repo, "log", "-1", "--format=%an%x00%s%x00%b").split("\x00")
    assert body[0] == "admin"
    assert body[1] == f"Update 1 device ({devices[0].id})"
    assert "assigned profile clinic (latest) (was profile vision (latest))" in body[2]
    again = api.ok(
        "POST", f"/devices/{devices[0].id}/assign", api.admin, json={"profile": "clinic"}
    )
    assert again["gitops"]["commits"] == {"shop-1": None}  # nothing changed: no commit
    assert _count(repo) == before + 1
    subprocess.run(["git", f"--git-dir={repo}", "fsck", "--strict"], check=True)


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl (with kustomize): apt install kubectl")
def test_what_the_controller_writes_builds_with_kubectl_kustomize(
    api: Api, settings: Settings, tmp_path: Path
) -> None:
    devices = _fleet(api, 2)
    archive = subprocess.run(
        ["git", f"--git-dir={_repo(settings)}", "archive", "main"], capture_output=True, check=True
    ).stdout
    tree = tmp_path / "tree"
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    for device in devices:
        built = subprocess.run(
            [KUBECTL, "kustomize", str(tree / "devices" / device.id)],
            capture_output=True,
            text=True,
        )
        assert built.returncode == 0, built.stderr
        kinds = {d["kind"] for d in yaml.safe_load_all(built.stdout) if d}
        assert {"ConfigMap", "HelmRelease"} <= kinds


def test_new_revision_moves_followers_not_pinned_devices(api: Api, settings: Settings) -> None:
    devices = _fleet(api)
    repo = _repo(settings)
    pinned = devices[2].id
    api.ok(
        "POST", f"/devices/{pinned}/assign", api.admin, json={"profile": "vision", "revision": 1}
    )
    out = api.ok("POST", "/profiles", api.admin, json={"name": "vision", "spec": _spec(2)})
    assert out["gitops"]["commits"]["shop-1"]
    assert _desired(repo, devices[0].id)["revision"] == "2"
    assert _desired(repo, pinned)["revision"] == "1"
    desired = api.call("GET", f"/devices/{pinned}/desired", devices[2].access_token).json()
    assert desired["revision"] == 1  # the device API agrees with the repository
    missing = api.call(
        "POST", f"/devices/{pinned}/assign", api.admin, json={"profile": "vision", "revision": 9}
    )
    assert missing.status_code == 404 and "no revision 9" in missing.json()["error"]["message"]


def test_approval_and_decommission_change_the_repository(api: Api, settings: Settings) -> None:
    devices = _fleet(api, 2)
    repo = _repo(settings)
    waiting = api.enrol(api.token(require_approval=True)["token"])
    assert waiting.status_code == 202
    waiting_id = waiting.json()["device_id"]
    _settled(api)
    assert waiting_id not in _git(repo, "ls-tree", "-r", "--name-only", "main")
    approved = api.ok("POST", f"/devices/{waiting_id}/approve", api.admin)
    assert approved["gitops"]["commits"]["shop-1"]
    assert f"devices/{waiting_id}/desired.yaml" in _git(
        repo, "ls-tree", "-r", "--name-only", "main"
    )
    gone = api.ok("POST", f"/devices/{devices[0].id}/decommission", api.admin)
    assert gone["gitops"]["commits"]["shop-1"]
    files = _git(repo, "ls-tree", "-r", "--name-only", "main")
    assert devices[0].id not in files and devices[1].id in files
    assert _git(repo, "log", "-1", "--format=%s").strip() == f"Remove 1 device ({devices[0].id})"


def test_restore_brings_back_assignments_as_a_new_commit_that_sticks(
    api: Api, settings: Settings
) -> None:
    devices = _fleet(api)
    repo = _repo(settings)
    good = _git(repo, "rev-parse", "main").strip()
    api.ok("POST", "/profiles", api.admin, json={"name": "vision", "spec": _spec(2)})
    api.ok("POST", f"/devices/{devices[2].id}/decommission", api.admin)
    bad = _git(repo, "rev-parse", "main").strip()
    assert _desired(repo, devices[0].id)["revision"] == "2"

    out = cli(
        api, "gitops", "restore", "shop-1", good[:10], "--reason", "fps regressed", "-o", "json"
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["restored"] == good
    assert sorted(result["devices"]) == sorted(d.id for d in devices[:2])
    assert result["skipped"] == {devices[2].id: "now decommissioned"}
    head = result["gitops"]["commits"]["shop-1"]
    assert head and _git(repo, "rev-parse", "main~1").strip() == bad  # history kept
    subject, body = _git(repo, "log", "-1", "--format=%s%x00%b").split("\x00")
    original = _git(repo, "log", "-1", "--format=%s", good).strip()
    assert subject == f"Revert to {good[:12]}: {original}"
    assert "fps regressed" in body
    assert {_desired(repo, d.id)["revision"] for d in devices[:2]} == {"1"}
    desired = api.call("GET", f"/devices/{devices[0].id}/desired", devices[0].access_token)
    assert desired.json()["revision"] == 1

    # It sticks: the next full write and the next revision leave the pinned devices be.
    rt = api.client.app.state.rt
    with rt.gitops.change("test") as full:
        full.why, full.sites = "full rewrite", None
    assert _git(repo, "rev-parse", "main").strip() == head
    api.ok("POST", "/profiles", api.admin, json={"name": "vision", "spec": _spec(3)})
    assert _desired(repo, devices[0].id)["revision"] == "1"
    audit = api.ok("GET", "/audit", api.admin)
    assert any(a["action"] == "gitops.restore" and a["detail"]["commit"] == good for a in audit)


def test_bad_repository_and_commit_are_refused_with_reasons(api: Api) -> None:
    _fleet(api, 1)
    for name in ("nope", "..", "%2E%2E"):
        r = api.call("GET", f"/gitops/{name}/log", api.admin)
        assert r.status_code == 404, (name, r.text)
    r = api.call("GET", "/gitops/nope/log", api.admin)
    assert "no fleet repository 'nope'" in r.json()["error"]["message"]
    r = api.call("POST", "/gitops/shop-1/restore", api.admin, json={"commit": "deadbeef"})
    assert r.status_code == 404 and "is not a commit" in r.json()["error"]["message"]
    r = api.call("POST", "/gitops/shop-1/restore", api.admin, json={"commit": "main"})
    assert r.status_code == 422  # a commit id, not a ref name
    out = cli(api, "gitops", "log", "nope")
    assert out.exit_code == 1 and "no fleet repository" in out.output


def test_cli_shows_status_and_log(api: Api) -> None:
    devices = _fleet(api, 1)
    api.profile("clinic", _spec(3))
    assigned = cli(api, "devices", "assign", devices[0].id, "clinic")
    assert assigned.exit_code == 0 and "fleet repository shop-1: commit" in assigned.output
    out = cli(api, "gitops", "log", "shop-1", "-o", "json")
    assert out.exit_code == 0, out.output
    entries = json.loads(out.output)
    assert entries[0]["subject"] == f"Update 1 device ({devices[0].id})"
    assert entries[0]["author"] == "admin <admin@edgefleet>"
    status = cli(api, "gitops", "status", "-o", "json")
    body = json.loads(status.output)
    assert body["last_error"] is None and body["repository_heads"]["shop-1"] == entries[0]["commit"]
    # no gitops_remote: the operator is told that no site can pull what is written
    assert (body["remote"], body["sites_can_pull"]) == (None, False)
    shown = cli(api, "gitops", "status").output
    assert "sites_can_pull" in shown and "False" in shown


def _remote_settings(tmp_path: Path, database_url: str | None) -> Settings:
    return load_settings(
        data_dir=tmp_path / "controller",
        database_url=database_url,
        gitops_remote=f"file://{tmp_path}/remote/{{site}}.git",
        gitops_debounce_seconds=0.1,
        gitops_wait_seconds=5,
    )


def test_a_failed_push_is_reported_and_retried_until_it_lands(
    tmp_path: Path, database_url: str | None
) -> None:
    from fastapi.testclient import TestClient

    settings = _remote_settings(tmp_path, database_url)
    prepared = prepare(settings)
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        api = Api(client, prepared.new_admin_token, prepared.controller_id)
        out = api.ok("POST", "/sites", api.admin, json={"name": "shop-1"})
        assert "pending" in out["gitops"] and "push" in out["gitops"]["pending"]
        status = api.ok("GET", "/gitops", api.admin)
        assert status["last_error"] and status["failing_since"] and status["pending"] >= 1
        metrics = client.get("/metrics").text
        assert "edgefleet_gitops_failures_total" in metrics
        remote = tmp_path / "remote" / "shop-1.git"
        subprocess.run(["git", "init", "--bare", "-q", str(remote)], check=True)
        local = _repo(settings)
        wait_for(
            lambda: (
                (remote / "refs/heads/main").exists()
                and _git(remote, "rev-parse", "main") == _git(local, "rev-parse", "main")
            ),
            15,
            "the retried push",
        )
        wait_for(lambda: api.ok("GET", "/gitops", api.admin)["last_error"] is None, 5, "recovery")
    client.app.state.rt.engine.dispose()


def test_a_controller_that_is_not_the_writer_writes_nothing(
    tmp_path: Path, database_url: str | None
) -> None:
    from fastapi.testclient import TestClient

    settings = load_settings(
        data_dir=tmp_path / "controller", database_url=database_url, gitops_writer=False
    )
    prepared = prepare(settings)
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        api = Api(client, prepared.new_admin_token, prepared.controller_id)
        out = api.ok("POST", "/sites", api.admin, json={"name": "shop-1"})
        assert "does not write" in out["gitops"]["pending"]
    assert not _repo(settings).exists()
    client.app.state.rt.engine.dispose()
