"""The rollout engine's work per status report, on a fleet of 10,000 devices with a
rollout whose first wave (1,000 devices) is updating.

    python bench/rollout_engine.py [--devices 10000] [--reports N] [--database-url URL]

A report that changes a device's status is stored by ``device_status.store``; for a
device a rollout waits on, the same transaction stores its outcome (the hook:
``Watch.observe``) and tells the driver. The driver steps (``Advancer.advance``) when
the news may change what the rollout does: a failure, the wave's last success, room
freed under a concurrency cap; a success while others of the wave are still updating
needs no step. Per report, the engine's work is the hook, the driver's decision and
the step when there is one. Measured over a wave's reports one at a time (no two
sharing a step), as medians and means, with the step on its own for the worst case.
Writing the fleet repositories is left out (once per wave, not per report).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlalchemy import insert, select, update

from bench.figures import database, figure
from bench.harness import fresh_schema, median
from bench.rollout_plan import populate
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.models import Profile, ProfileRevision, RolloutDevice
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.rollouts.driver import Driver
from edgefleet.controller.rollouts.spec import RolloutSpec
from edgefleet.controller.rollouts.states import DeviceOutcome
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import device_status, rollout_actions
from edgefleet.controller.settings import load_settings
from edgefleet.wire import StatusReport


def report(applied: int) -> tuple[StatusReport, str]:
    body = StatusReport(applied_revision=applied, inference={"count": 10, "p95_ms": 3.0})
    raw = json.dumps(body.model_dump(mode="json")).encode()
    return body, device_status.digest(raw)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--reports", type=int, default=0, help="0: the whole wave")
    p.add_argument("--database-url")
    args = p.parse_args()
    url = fresh_schema(args.database_url) if args.database_url else None
    settings = load_settings(
        data_dir=Path(tempfile.mkdtemp(prefix="ef-engine-")),
        database_url=url,
        gitops_writer=False,
        rollout_engine=False,
    )
    prepare(settings)
    rt = Runtime(settings)
    populate(rt.engine, args.devices, 100)
    with rt.engine.begin() as conn:
        now = datetime.now(UTC)
        conn.execute(
            insert(ProfileRevision.__table__),  # type: ignore[attr-defined]
            [
                {"profile_id": 1, "number": n, "digest": f"d{n}", "spec": {}, "created_at": now,
                 "created_by": "bench"}
                for n in (1, 2)
            ],
        )  # fmt: skip
        conn.execute(update(Profile).values(latest_revision=2))
    who = Operator("bench", Role.admin)
    spec = RolloutSpec(profile="vision", revision=2, waves="10%,100%", bake_seconds=3600)
    rid = rollout_actions.create(rt, who, spec, "bench", datetime.now(UTC))["id"]
    driver = Driver(rt)
    assert driver.lease.acquire()
    advancer = driver.advancer
    advancer.advance(rid)  # moves wave 1
    with rt.engine.connect() as conn:
        rows = conn.execute(select(RolloutDevice.device_id, RolloutDevice.state)).all()
    waited = [d for d, state in rows if state == DeviceOutcome.updating][: args.reports or None]
    rt.watch.waited()  # loaded once per epoch, as in a worker
    observe = rt.watch.observe
    hooks: list[float] = []

    def timed(s: object, device_id: str, status: dict) -> bool:  # type: ignore[type-arg]
        t0 = time.perf_counter()
        found = observe(s, device_id, status)  # type: ignore[arg-type]
        hooks.append(time.perf_counter() - t0)
        return found

    rt.watch.observe = timed  # type: ignore[method-assign]
    stores, steps, work = [], [], []
    for device_id in waited:
        body, digest = report(2)
        t0 = time.perf_counter()
        device_status.store(rt, device_id, body, digest)
        stores.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if driver._worth_a_step([f"{rid} succeeded"]):
            advancer.advance(rid)
            steps.append(time.perf_counter() - t0)
        work.append(hooks[-1] + time.perf_counter() - t0)
    db = "PostgreSQL" if url else "SQLite"
    print(
        f"rollout engine, {args.devices:,} devices, wave of {len(waited):,} updating ({db}): "
        f"engine work per report median {median(work) * 1000:.2f} ms, mean "
        f"{sum(work) / len(work) * 1000:.2f} ms (hook {median(hooks) * 1000:.2f} ms; "
        f"{len(steps)} step(s), median {median(steps or [0]) * 1000:.2f} ms); the whole store of a "
        f"report {median(stores) * 1000:.2f} ms"
    )
    settings = {"database": database(url), "devices": args.devices, "reports": len(waited)}
    figure(
        f"rollout engine work per status report ({db})",
        median(work) * 1000,
        "ms",
        budget=2,
        note=f"median over {len(waited):,} reports; mean {sum(work) / len(work) * 1000:.2f} ms",
        settings=settings,
    )
    figure(
        f"rollout engine step ({db})",
        median(steps or [0]) * 1000,
        "ms",
        note=f"median of {len(steps)} step(s)",
        settings=settings,
    )
    t0 = time.perf_counter()
    for _ in range(50):
        advancer.advance(rid)
    print(f"  a step with nothing to do: {(time.perf_counter() - t0) / 50 * 1000:.2f} ms")
    rt.engine.dispose()


if __name__ == "__main__":
    main()
