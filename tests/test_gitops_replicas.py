"""One writer at a time: two replicas of two worker processes each, on PostgreSQL and one
repository root, take operator changes at once. Every change is its own commit naming
its reason, history stays linear, and the repository ends exactly as the database says."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.support.apiclient import csr_for, new_key
from tests.support.git import git as _git
from tests.support.processes import ControllerProcess, wait_for

pytestmark = pytest.mark.usefixtures("postgres_available")


def test_concurrent_changes_on_two_replicas_are_one_linear_commit_each(
    tmp_path: Path, postgres_url: str
) -> None:
    shared = tmp_path / "gitops"
    a = ControllerProcess(tmp_path / "a", database_url=postgres_url, gitops_root=str(shared))
    b = None
    try:
        a.start()
        b = a.replica(tmp_path / "b").start()
        with a.client() as ca, b.client() as cb:
            ca.post("/sites", json={"name": "shop"}).raise_for_status()
            for n in (1, 2):
                spec = {"config": {"n": n}}
                ca.post("/profiles", json={"name": "p", "spec": spec}).raise_for_status()
            token = ca.post("/tokens", json={"site": "shop", "profile": "p"}).json()["token"]
            ids = []
            for _ in range(8):
                r = ca.post("/enrol", json={"token": token, "csr": csr_for(new_key())})
                assert r.status_code == 200, r.text
                ids.append(r.json()["device_id"])
            for client in (ca, cb):  # both replicas: the debounced enrolments are written
                wait_for(lambda c=client: c.get("/gitops").json()["pending"] == 0, 20, "writer")
            repo = shared / "shop.git"
            before = int(_git(repo, "rev-list", "--count", "main"))

            def assign(i: int) -> dict:
                client = (ca, cb)[i % 2]
                body = {"profile": "p", "revision": 1}
                r = client.post(f"/devices/{ids[i]}/assign", json=body)
                r.raise_for_status()
                return r.json()["gitops"]

            with ThreadPoolExecutor(8) as pool:
                outcomes = list(pool.map(assign, range(len(ids))))
        # Each change holds the writer's lock around its transaction: its own commit.
        made = [o["commits"]["shop"] for o in outcomes]
        assert all(made) and len(set(made)) == len(ids), outcomes
        assert int(_git(repo, "rev-list", "--count", "main")) == before + len(ids)
        assert _git(repo, "rev-list", "--merges", "main") == ""  # linear
        for commit, device_id in zip(made, ids, strict=True):
            paths = _git(repo, "diff", "--name-only", f"{commit}~1", commit).split()
            assert paths and {p.split("/")[1] for p in paths} == {device_id}
            assert "assigned profile p revision 1" in _git(repo, "log", "-1", "--format=%b", commit)
        for device_id in ids:
            text = _git(repo, "show", f"main:devices/{device_id}/desired.yaml")
            data = next(d for d in yaml.safe_load_all(text) if d)["data"]
            assert data["revision"] == "1"
        subprocess.run(["git", f"--git-dir={repo}", "fsck", "--strict"], check=True)
    finally:
        for ctl in (b, a):
            if ctl is not None:
                ctl.close()
