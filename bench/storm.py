"""The reconnect storm: a fleet at its interval, an outage, and the whole fleet back at
the same instant on 2,000 new TLS connections. Budget (issue 12): the controller stays up,
sheds with 429/503 and Retry-After rather than letting requests time out, and every
device has reported again within three intervals.

    python bench/storm.py [--devices 20000] [--interval 30] [--outage-at 60]
        [--outage-for 30] [--workers N] [--database-url postgresql://...]
        [--storm-connections 2000] [--reauth] [--keep DIR]

The run lasts until three intervals and a little after the return. ``edgefleet
simulate`` runs as a user runs it, in its own process, against a fresh controller with
the per-address rate limits off (one simulator is one address); its JSON report's
``storm`` section is read back. With ``--storm-connections 0`` the returning fleet opens
one connection per device, up to the file descriptor limit, which this script raises
as far as the hard limit allows (``--nofile``) for the simulator and the controller.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import database, figure
from harness import run_simulator

STORM_CONNECTIONS = 2000
"""Connections the returning fleet opens at once. One per device (``0``: 19,232 of
20,000 under this machine's limit of 20,000 descriptors) stalled the simulator's own
event loop for 12 s on the handshakes (nothing answered, its sampler silent): the
simulator, not the controller, was then what was measured. 2,000 new TLS connections
at once keep the simulator under a third of a core during the storm."""
BUDGET_INTERVALS = 3
AFTER_BUDGET_S = 10.0
"""The run goes on this long past the budget, so a late device is seen late, not cut."""


def raise_nofile(wanted: int) -> int:
    """Raise this process's file descriptor limit (inherited by the controller and the
    simulator) towards ``wanted``; the soft limit it got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (wanted, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), max(hard, target)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=20000)
    p.add_argument("--interval", type=float, default=30)
    p.add_argument("--outage-at", type=float, help="Default: two intervals in")
    p.add_argument("--outage-for", type=float, default=30)
    p.add_argument("--workers", type=int)
    p.add_argument("--database-url")
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--enrol-concurrency", type=int, default=64)
    p.add_argument(
        "--storm-connections",
        type=int,
        default=STORM_CONNECTIONS,
        help="0: one per device, up to the file descriptor limit",
    )
    p.add_argument("--reauth", action="store_true", help="Returning devices get new tokens")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--nofile", type=int, default=65536)
    p.add_argument("--keep", type=Path, help="Write report.json and chart.png here")
    args = p.parse_args()

    outage_at = args.outage_at if args.outage_at is not None else 2 * args.interval
    budget = BUDGET_INTERVALS * args.interval
    duration = outage_at + args.outage_for + budget + AFTER_BUDGET_S
    nofile = raise_nofile(args.nofile)
    out = args.keep or Path(tempfile.mkdtemp(prefix="ef-storm-"))
    flags = [
        *("--devices", str(args.devices), "--interval", str(args.interval)),
        *("--duration", str(duration), "--connections", str(args.connections)),
        *("--enrol-concurrency", str(args.enrol_concurrency), "--bucket", "1"),
        *("--outage-at", str(outage_at), "--outage-for", str(args.outage_for)),
        *("--storm-connections", str(args.storm_connections)),
        *(["--storm-reauth"] if args.reauth else []),
        *("--timeout", str(args.timeout)),
    ]
    run = run_simulator(flags, out, args.database_url, args.workers, "storm")
    doc, wall, alive = run.report, run.wall_s, run.controller_up
    print(run.stdout, end="")
    st = doc["storm"]
    lat, ttr, c = st["latency"], st["time_to_report"], st["controller"]
    db = database(args.database_url)
    workers = args.workers or "default"
    print(
        f"storm ({db}, controller workers {workers}, file descriptors {nofile}): "
        f"{st['devices_online']} devices at {args.interval:g} s back at once after "
        f"{args.outage_for:g} s away on up to {st['connections']['pool']} connections "
        f"({st['connections']['opened']} opened): {st['reported']} reported again, the last "
        f"after {st['all_reported_after_s']} s (p50 {ttr['p50_s']} s, budget {budget:g} s); "
        f"{st['shed']} shed (Retry-After {st['retry_after_s']['min']}-"
        f"{st['retry_after_s']['max']} s), {st['errors']} errors {st['errors_by_kind']}; "
        f"{st['requests']} answered at {st['per_second']}/s, p50 {lat['p50_ms']} ms, "
        f"p99 {lat['p99_ms']} ms; controller CPU {c['cpu_pct']}% of a core, RSS max "
        f"{c['rss_max_mb']} MB, up {alive}; simulator CPU {st['simulator_cpu_pct']}% "
        f"during the storm, {doc['simulator_cpu_seconds']} s over {wall:.0f} s wall, max RSS "
        f"{doc['simulator_max_rss_mb']} MB; report in {out}"
    )
    settings = {
        "database": db,
        "workers": workers,
        "devices": args.devices,
        "interval_s": args.interval,
        "outage_for_s": args.outage_for,
        "storm_connections": st["connections"]["pool"],
        "reauth": args.reauth,
    }
    fleet = f"{args.devices:,} devices at {args.interval:g} s"
    late = st["all_reported_after_s"]
    figure(
        f"storm {fleet}: every device reported again after the return",
        late if late is not None else st["window_s"],
        "s",
        budget=budget,
        note=(
            f"p50 {ttr['p50_s']} s"
            if late is not None
            else f"{st['missing']} of {st['devices_online']} never reported"
        ),
        settings=settings,
    )
    figure(
        f"storm {fleet}: failed requests during the storm",
        st["errors"],
        "requests",
        budget=0,
        note=f"{st['shed']} shed (429/503 with Retry-After), {doc['error_count']} in the run",
        settings=settings,
    )
    figure(
        f"storm {fleet}: p99 during the storm",
        lat["p99_ms"] or 0,
        "ms",
        note=f"{st['requests']} answered, {st['connections']['opened']} new connections",
        settings=settings,
    )
    figure(
        f"storm {fleet}: controller up after the storm",
        1 if alive and c["answering_at_end"] else 0,
        "yes",
        budget=1,
        better="higher",
        note=f"CPU {c['cpu_pct']}% of a core, RSS max {c['rss_max_mb']} MB",
        settings=settings,
    )
    figure(
        f"storm {fleet}: simulator CPU during the storm",
        st["simulator_cpu_pct"] or 0,
        "% of a core",
        note="on the controller's machine",
        settings=settings,
    )
    if run.returncode or not st["within_budget"]:
        raise SystemExit(run.returncode or 1)


if __name__ == "__main__":
    main()
