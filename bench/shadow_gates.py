"""Shadow comparisons on the controller (issue 14): what agreement windows add to the
status path, what reading a wave's shadow gates costs, and what a wave in its shadow
phase adds to building a device's desired state.

    python bench/shadow_gates.py [--devices 10000] [--reports 500] [--wave 1000]
                                 [--database-url URL]

Status: ``device_status.store`` of a changed report (the applied revision alternates,
so every report is written), without agreement windows and with one new window each,
interleaved; medians over ``--reports`` each. The difference is the windows' cost; a
report without any runs no statement on their table (tests/test_shadow_fleet.py).

Gates: a wave of ``--wave`` devices that reported ten windows each; the read of those
windows and the verdict (``rollouts/shadow.py``), median of 7.

Desired state: ``Runtime._build_desired`` of a wave device with the shadow wave cached,
beside the same build with no rollout shadowing; medians over 500 builds each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlalchemy import insert, select, update
from sqlmodel import Session

from bench.figures import database, figure
from bench.harness import fresh_schema, median
from bench.rollout_plan import populate
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.models import (
    Profile,
    ProfileRevision,
    RolloutDevice,
    RolloutWave,
    ShadowWindowRecord,
)
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.rollouts import shadow as shadow_gate
from edgefleet.controller.rollouts.spec import Gates, RolloutSpec
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import device_status, rollout_actions
from edgefleet.controller.services import shadow as shadow_store
from edgefleet.controller.settings import load_settings
from edgefleet.wire import ShadowWindow, StatusReport

OLD = "registry.bench:5000/models/detector@sha256:" + "a" * 64
NEW = "registry.bench:5000/models/detector@sha256:" + "b" * 64


def window(start: int) -> ShadowWindow:
    return ShadowWindow(
        key="parent",
        model="detector",
        active_digest="sha256:" + "a" * 64,
        candidate_digest="sha256:" + "b" * 64,
        start=start,
        seconds=60,
        compared=500,
        top1_total=500,
        top1_agree=490,
        abs_diff_sum=2.5,
        abs_diff_max=0.05,
    )


def report(applied: int, windows: list[ShadowWindow]) -> tuple[StatusReport, str]:
    body = StatusReport(
        applied_revision=applied, inference={"count": 10, "p95_ms": 3.0}, shadow=windows
    )
    raw = json.dumps(body.model_dump(mode="json")).encode()
    return body, device_status.digest(raw)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--reports", type=int, default=500)
    p.add_argument("--wave", type=int, default=1000)
    p.add_argument("--database-url")
    args = p.parse_args()
    url = fresh_schema(args.database_url) if args.database_url else None
    settings = load_settings(
        data_dir=Path(tempfile.mkdtemp(prefix="ef-shadow-")),
        database_url=url,
        gitops_writer=False,
        rollout_engine=False,
    )
    prepare(settings)
    rt = Runtime(settings)
    populate(rt.engine, args.devices, 100)
    now = datetime.now(UTC)
    with rt.engine.begin() as conn:
        conn.execute(
            insert(ProfileRevision.__table__),  # type: ignore[attr-defined]
            [
                {"profile_id": 1, "number": n, "digest": f"d{n}", "created_at": now,
                 "created_by": "bench",
                 "spec": {"models": [{"name": "detector", "reference": ref}]}}
                for n, ref in ((1, OLD), (2, NEW))
            ],
        )  # fmt: skip
        conn.execute(update(Profile).values(latest_revision=2, released_revision=1))
    db = "PostgreSQL" if url else "SQLite"
    settings_used = {"database": database(url), "devices": args.devices}

    # -- the status path ------------------------------------------------------------------
    plain, windowed = [], []
    start = int(time.time()) // 60 * 60 - 86400
    for i in range(args.reports):
        device_id = f"dev-{i % args.devices:06d}"
        for times, windows in ((plain, []), (windowed, [window(start + i * 60)])):
            body, digest = report(1 + (len(times) % 2), windows)
            t0 = time.perf_counter()
            device_status.store(rt, device_id, body, digest)
            times.append(time.perf_counter() - t0)
    added = (median(windowed) - median(plain)) * 1000
    print(
        f"status store ({db}, {args.reports} changed reports each): without windows "
        f"{median(plain) * 1000:.2f} ms, with one agreement window "
        f"{median(windowed) * 1000:.2f} ms (+{added:.2f} ms)"
    )
    figure(
        f"status store with one agreement window, added ({db})",
        added,
        "ms",
        note=f"medians of {args.reports} interleaved changed reports; without windows "
        f"{median(plain) * 1000:.2f} ms",
        settings=settings_used,
    )

    # -- the gates -----------------------------------------------------------------------------
    who = Operator("bench", Role.admin)
    spec = RolloutSpec(
        profile="vision",
        revision=2,
        waves=f"{args.wave},100%",
        shadow_seconds=3600,
        gates=Gates(min_agreement=0.95, max_mad=0.05),
    )
    rid = rollout_actions.create(rt, who, spec, "bench", now)["id"]
    with Session(rt.engine) as s:
        wave = s.scalars(select(RolloutDevice.device_id).where(RolloutDevice.wave == 1)).all()
    with rt.engine.begin() as conn:
        conn.execute(
            insert(ShadowWindowRecord.__table__),  # type: ignore[attr-defined]
            [
                {"device_id": d, "site_id": 1, "profile_id": 1, "key": f"rollout-{rid}",
                 "model": "detector", "active_digest": "sha256:" + "a" * 64,
                 "candidate_digest": "sha256:" + "b" * 64, "start": start + k * 60,
                 "seconds": 60, "compared": 500, "skipped": 0, "errors": 0, "top1_total": 500,
                 "top1_agree": 490, "abs_diff_sum": 2.5, "abs_diff_max": 0.05,
                 "active_p95_ms": 3.0, "candidate_p95_ms": 2.0, "received_at": now}
                for d in wave
                for k in range(10)
            ],
        )  # fmt: skip
        conn.execute(
            update(RolloutWave)
            .where(RolloutWave.number == 1)
            .values(state="shadowing", shadow_until=now + timedelta(hours=1))
        )
    reads = []
    for _ in range(7):
        t0 = time.perf_counter()
        with Session(rt.engine) as s:
            members = select(RolloutDevice.device_id).where(
                RolloutDevice.rollout_id == rid, RolloutDevice.wave == 1
            )
            found = shadow_store.windows_of(s, f"rollout-{rid}", members)
            verdict, _ = shadow_gate.evidence(
                spec.gates,
                [{"name": "detector", "reference": NEW}],
                found,
                shadow_store.figures,
            )
        reads.append(time.perf_counter() - t0)
    assert verdict.ok, verdict.detail
    print(
        f"shadow gates of a wave of {len(wave):,} devices x 10 windows ({db}): "
        f"{median(reads) * 1000:.1f} ms"
    )
    figure(
        f"shadow gates read, wave of {len(wave):,} devices ({db})",
        median(reads) * 1000,
        "ms",
        note="10 windows per device; median of 7",
        settings=settings_used,
    )

    # -- the desired state ---------------------------------------------------------------------
    member = wave[0]
    builds: dict[str, list[float]] = {"shadowing": [], "none": []}
    for name in ("shadowing", "none"):
        if name == "none":
            with rt.engine.begin() as conn:
                conn.execute(update(RolloutWave).values(state="pending"))
        rt.changed()
        rt._drop_caches()
        rt.shadow_waves()  # once per epoch, as in a worker
        for _ in range(500):
            t0 = time.perf_counter()
            entry = rt._build_desired(member)
            builds[name].append(time.perf_counter() - t0)
        assert (b'"shadow"' in entry.body) == (name == "shadowing")
    print(
        f"desired state build ({db}): with the wave shadowing "
        f"{median(builds['shadowing']) * 1000:.3f} ms, "
        f"without {median(builds['none']) * 1000:.3f} ms"
    )
    figure(
        f"desired state build of a shadowing device ({db})",
        median(builds["shadowing"]) * 1000,
        "ms",
        note=f"without a shadow {median(builds['none']) * 1000:.3f} ms; medians of 500",
        settings=settings_used,
    )
    rt.engine.dispose()


if __name__ == "__main__":
    main()
