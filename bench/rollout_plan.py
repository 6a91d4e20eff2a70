"""Planning a rollout over 100,000 devices: load the selection from the database and
cut it into waves, as ``edgefleet rollouts plan`` does.

    python bench/rollout_plan.py [--devices 100000] [--runs 5] [--database-url URL]

The fleet is written straight into a migrated database (1,000 sites, one profile, a
label on every device, 10% of them not seen for an hour). Each run times loading the
members (profile, label and site filters, online or not) plus ranking and cutting
them into ``1,5%,25%,100%``; the median is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlalchemy import insert

from bench.figures import database, figure
from bench.harness import fresh_schema, median
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.db import make_engine
from edgefleet.controller.models import Device, Profile, Site
from edgefleet.controller.rollouts.members import select_members
from edgefleet.controller.rollouts.plan import assign, parse_steps
from edgefleet.controller.settings import load_settings


def populate(engine: object, devices: int, sites: int) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            insert(Site.__table__),  # type: ignore[attr-defined]
            [
                {"id": i + 1, "name": f"site-{i:04d}", "timezone": "UTC", "labels": {},
                 "created_at": now}
                for i in range(sites)
            ],
        )  # fmt: skip
        conn.execute(
            insert(Profile.__table__),  # type: ignore[attr-defined]
            [{"id": 1, "name": "vision", "latest_revision": 1, "created_at": now}],
        )
        for start in range(0, devices, 10_000):
            conn.execute(
                insert(Device.__table__),  # type: ignore[attr-defined]
                [
                    {
                        "id": f"dev-{d:06d}",
                        "state": "ready",
                        "site_id": d % sites + 1,
                        "profile_id": 1,
                        "labels": {"tier": "gold" if d % 3 else "silver"},
                        "key_pin": f"sha256:bench{d:08d}",
                        "public_key_pem": "-",
                        "credential_generation": 1,
                        "inventory": {},
                        "status": {},
                        "created_at": now,
                        "state_changed_at": now,
                        "last_seen_at": now - timedelta(hours=1 if d % 10 == 0 else 0),
                    }
                    for d in range(start, min(start + 10_000, devices))
                ],
            )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--database-url")
    args = p.parse_args()
    url = fresh_schema(args.database_url) if args.database_url else None
    settings = load_settings(data_dir=Path(tempfile.mkdtemp(prefix="ef-plan-")), database_url=url)
    prepare(settings)
    engine = make_engine(settings.effective_database_url)
    populate(engine, args.devices, 1000)
    steps = parse_steps("1,5%,25%,100%")
    times, waves = [], []
    for run in range(args.runs):
        t0 = time.perf_counter()
        members = select_members(
            engine, "vision", labels={"tier": "gold"}, now=datetime.now(UTC), interval_seconds=60
        )
        waves = assign(members, steps, f"rollout-{run}")
        times.append(time.perf_counter() - t0)
    db = "PostgreSQL" if url else "SQLite"
    sizes = ", ".join(str(len(w.members)) for w in waves)
    offline = sum(w.offline for w in waves)
    print(
        f"plan over {args.devices:,} devices ({db}): median {median(times) * 1000:.0f} ms "
        f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}) over {args.runs} runs; "
        f"label tier=gold selects {sum(len(w.members) for w in waves):,}, waves {sizes}, "
        f"{offline:,} offline"
    )
    figure(
        f"plan a rollout over {args.devices:,} devices ({db})",
        median(times) * 1000,
        "ms",
        budget=2000 if args.devices <= 100_000 else None,
        note=f"median of {args.runs}; {sum(len(w.members) for w in waves):,} selected",
        settings={"database": database(url), "devices": args.devices},
    )
    engine.dispose()


if __name__ == "__main__":
    main()
