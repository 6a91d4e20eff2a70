"""The fleet repository's budgets: a whole fleet from empty, then one assignment change.

    python bench/gitops.py [--runs 3] [--sites 1000] [--devices 10000] [--revisions 20]
                           [--applier flux|argocd] [--fleet-repository]

From empty: a fresh root and a fresh process state (render caches dropped), then
``sync`` renders and commits every site's repository. One change: one device moves to
another revision and ``sync`` runs again over the whole fleet; exactly one repository may
get a commit. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.figures import figure
from edgefleet.controller.gitops import render, repository
from edgefleet.controller.gitops import sync as gitops_sync
from edgefleet.controller.gitops.model import Device, FleetState, GitopsParams, Revision, Site

DIGEST = "sha256:" + "ab" * 32


def fleet(sites: int, devices: int, revisions: int) -> FleetState:
    revs = []
    for i in range(revisions):
        profile, number = f"profile-{i % 4}", i // 4 + 1
        spec = {
            "description": f"{profile} r{number}",
            "mode": "k3s",
            "models": [
                {"name": "detector", "reference": f"registry.example/models/det-{i}@{DIGEST}"},
                {"name": "classifier", "reference": f"registry.example/models/cls@{DIGEST}"},
            ],
            "applications": [
                {
                    "name": "inference",
                    "helm": {
                        "repository": "https://charts.example/edge",
                        "chart": "inference",
                        "version": f"1.{i}.0",
                        "values": {"replicas": 1, "threshold": 0.5 + i / 100},
                    },
                },
                {
                    "name": "collector",
                    "kustomize": {
                        "repository": "https://git.example/edge/collector.git",
                        "path": "deploy/edge",
                        "ref": f"v2.{i}.0",
                    },
                },
            ],
            "config": {"fps": 10 + i, "zones": ["a", "b"], "upload": {"batch": 100}},
            "policies": {"interval_seconds": 30},
            "labels": {"tier": "edge"},
        }
        revs.append(Revision(profile, number, spec))
    site_list = [Site(f"site-{s:04d}") for s in range(sites)]
    devs, assignments = [], {}
    for d in range(devices):
        device = Device(
            f"dev-{d:05d}",
            site_list[d % sites].name,
            {"row": str(d % 7)},
            "direct" if d % 5 == 0 else "k3s",
        )
        devs.append(device)
        assignments[device.id] = revs[d % revisions].key
    return FleetState(site_list, devs, revs, assignments)


def _forget() -> None:
    """Drop what a long-running process would have cached: this is a cold start."""
    for fn in (render._device_folder, render._device_files, render._applier_file):
        fn.cache_clear()
    repository._blob_ids.clear()
    gitops_sync._open.clear()


def run(args: argparse.Namespace, params: GitopsParams) -> tuple[float, float, int]:
    state = fleet(args.sites, args.devices, args.revisions)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "gitops"
        _forget()
        start = time.perf_counter()
        first = gitops_sync.sync(root, params, state, "bench", "initial render")
        empty = time.perf_counter() - start
        assert all(first.values()), "every repository gets its first commit"
        moved = state.devices[1]
        current = state.assignments[moved.id]
        state.assignments[moved.id] = next(r.key for r in state.revisions if r.key != current)
        start = time.perf_counter()
        second = gitops_sync.sync(root, params, state, "alice", "move one device")
        change = time.perf_counter() - start
        commits = [name for name, commit in second.items() if commit]
        again = gitops_sync.sync(root, params, state, "alice", "nothing changed")
        assert not any(again.values()), "an unchanged state makes no commit"
        repo = root / f"{commits[0]}.git"
        count = subprocess.run(
            ["git", f"--git-dir={repo}", "rev-list", "--count", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert count == "2", count
        return empty, change, len(commits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--revisions", type=int, default=20)
    parser.add_argument("--applier", choices=["flux", "argocd"], default="flux")
    parser.add_argument("--fleet-repository", action="store_true")
    args = parser.parse_args()
    params = GitopsParams(applier=args.applier, per_site=not args.fleet_repository)
    empties, changes = [], []
    for i in range(args.runs):
        empty, change, commits = run(args, params)
        empties.append(empty)
        changes.append(change)
        print(
            f"run {i + 1}: from empty {empty:.2f} s; one assignment change "
            f"{change * 1000:.0f} ms, {commits} commit(s)",
            flush=True,
        )
    layout = "one fleet repository" if args.fleet_repository else f"{args.sites} repositories"
    print(
        f"{args.devices} devices, {args.sites} sites, {args.revisions} revisions, "
        f"{args.applier}, {layout}: from empty median {statistics.median(empties):.2f} s "
        f"(budget < 10 s); one change median {statistics.median(changes) * 1000:.0f} ms "
        f"(budget < 200 ms)"
    )
    what = f"{args.applier}, " + ("one fleet repository" if args.fleet_repository else "per site")
    settings = {"sites": args.sites, "devices": args.devices, "revisions": args.revisions}
    figure(
        f"fleet repository from empty ({what})",
        statistics.median(empties),
        "s",
        budget=10,
        note=f"{args.devices:,} devices on {args.sites:,} sites; median of {args.runs}",
        settings=settings,
    )
    figure(
        f"fleet repository, one assignment changed ({what})",
        statistics.median(changes) * 1000,
        "ms",
        budget=200,
        note=f"median of {args.runs}; one commit (asserted)",
        settings=settings,
    )


if __name__ == "__main__":
    main()
