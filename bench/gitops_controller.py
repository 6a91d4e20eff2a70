"""The fleet repositories written by a real controller: the whole fleet at start, then
operator assignments through the API, each answered with its commit.

    python bench/gitops_controller.py [--sites 1000] [--devices 10000] [--assigns 20]

The fleet (sites, 20 profile revisions, devices) is written straight into the database
of a stopped controller; the controller then starts and writes every repository from the
database (measured until its writer reports nothing pending). Each assignment is one
``POST /devices/{id}/assign`` that returns only when its commit is on disk: read the
intent, render, commit, all of it. Prints the figures and the medians.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlalchemy import create_engine, insert

from bench.figures import figure
from bench.gitops import fleet
from bench.harness import start_controller
from edgefleet.controller.models import Device, Profile, ProfileRevision, Site
from edgefleet.controller.services.profiles import spec_digest


def populate(data_dir: Path, sites: int, devices: int, revisions: int) -> list[str]:
    """Write the benchmark fleet into the controller's SQLite database; device ids."""
    state = fleet(sites, devices, revisions)
    engine = create_engine(f"sqlite:///{data_dir / 'edgefleet.db'}")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(Site.__table__),  # type: ignore[attr-defined]
            [
                {"id": i + 1, "name": s.name, "timezone": "UTC", "labels": {}, "created_at": now}
                for i, s in enumerate(state.sites)
            ],
        )
        names = sorted({r.profile for r in state.revisions})
        latest = {n: max(r.number for r in state.revisions if r.profile == n) for n in names}
        profile_ids = {n: i + 1 for i, n in enumerate(names)}
        conn.execute(
            insert(Profile.__table__),  # type: ignore[attr-defined]
            [
                {"id": profile_ids[n], "name": n, "latest_revision": latest[n], "created_at": now}
                for n in names
            ],
        )
        conn.execute(
            insert(ProfileRevision.__table__),  # type: ignore[attr-defined]
            [
                {
                    "profile_id": profile_ids[r.profile],
                    "number": r.number,
                    "digest": spec_digest(r.spec),
                    "spec": r.spec,
                    "created_at": now,
                    "created_by": "bench",
                }
                for r in state.revisions
            ],
        )
        site_ids = {s.name: i + 1 for i, s in enumerate(state.sites)}
        rows = []
        for n, d in enumerate(state.devices):
            profile, number = state.assignments[d.id]
            rows.append(
                {
                    "id": d.id,
                    "state": "ready",
                    "site_id": site_ids[d.site],
                    "profile_id": profile_ids[profile],
                    "profile_revision": number,
                    "labels": {},
                    "key_pin": f"sha256:bench{n:08d}",
                    "public_key_pem": "-",
                    "credential_generation": 1,
                    "inventory": {},
                    "status": {},
                    "created_at": now,
                    "state_changed_at": now,
                }
            )
        conn.execute(insert(Device.__table__), rows)  # type: ignore[attr-defined]
    engine.dispose()
    return [d.id for d in state.devices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--revisions", type=int, default=20)
    parser.add_argument("--assigns", type=int, default=20)
    args = parser.parse_args()

    first = start_controller()
    admin, data_dir = first.admin_token, first.data_dir
    first.stop()
    ids = populate(data_dir, args.sites, args.devices, args.revisions)
    os.environ["EDGEFLEET_GITOPS_RESYNC_SECONDS"] = "0"
    started = time.perf_counter()
    ctl = start_controller(data_dir=data_dir, admin_token=admin)
    try:
        with ctl.client() as http:
            while True:
                status = http.get("/gitops").json()
                if status["pending"] == 0 and status["last_success_at"]:
                    break
                time.sleep(0.05)
            whole = time.perf_counter() - started
            heads = sum(1 for h in status["repository_heads"].values() if h)
            print(f"start to every repository written: {whole:.2f} s ({heads} repositories)")
            rng = random.Random(7)
            times = []
            for _ in range(args.assigns):
                device = rng.choice(ids)
                profile = f"profile-{rng.randrange(4)}"
                t0 = time.perf_counter()
                r = http.post(f"/devices/{device}/assign", json={"profile": profile})
                elapsed = time.perf_counter() - t0
                r.raise_for_status()
                made = [c for c in r.json()["gitops"]["commits"].values() if c]
                assert len(made) <= 1, made
                times.append(elapsed)
            print(
                f"{args.devices} devices on {args.sites} sites: one assignment through the API, "
                f"commit included: median {statistics.median(times) * 1000:.0f} ms, "
                f"max {max(times) * 1000:.0f} ms over {len(times)} (budget < 200 ms)"
            )
            settings = {
                "database": "SQLite",
                "controller workers": os.environ.get("EDGEFLEET_WORKERS") or os.cpu_count(),
                "sites": args.sites,
                "devices": args.devices,
            }
            figure(
                "controller start to every repository written",
                whole,
                "s",
                note=f"{heads} repositories, from process start",
                settings=settings,
            )
            figure(
                "POST assign answered with its commit",
                statistics.median(times) * 1000,
                "ms",
                budget=200,
                note=f"median of {len(times)}, max {max(times) * 1000:.0f} ms",
                settings=settings,
            )
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
