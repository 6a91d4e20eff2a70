"""``edgefleet simulate``: a simulated fleet against a real controller, with a summary
table, a JSON report and a PNG chart (the work is in :mod:`edgefleet.simulate`).

Exit codes: 0 when every request was answered as a device expects, 1 when any failed
(an HTTP error, a timeout, a lost connection: ``make soak`` gates on it) or the
controller no longer answered after a storm, 2 when the run could not start (bad
flags, unreachable controller, refused token). Load the controller shed (429/503 with
Retry-After) is counted apart and retried, not an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from edgefleet.cli import config
from edgefleet.cli.common import Globals, err
from edgefleet.cli.output import console
from edgefleet.errors import ConfigError


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary(report: dict[str, Any]) -> Table:
    """Per endpoint: requests, rate, p50/p95/p99, errors, shed."""
    table = Table(
        Column("endpoint", no_wrap=True),
        "requests",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "shed",
        title=(
            f"{report['devices']['enrolled']}/{report['devices']['requested']} devices, "
            f"{report['run_seconds']:.0f} s: {_fmt(report['requests_per_second'])} req/s"
        ),
    )
    for name, e in report["endpoints"].items():
        table.add_row(
            name,
            str(e["requests"]),
            _fmt(e["per_second"]),
            _fmt(e["p50_ms"]),
            _fmt(e["p95_ms"]),
            _fmt(e["p99_ms"]),
            str(e["errors"]),
            str(e["shed"]),
        )
    return table


def _print(report: dict[str, Any]) -> None:
    console.print(summary(report))
    lat = report["latency"]
    console.print(
        f"all device requests after enrolment: p50 {_fmt(lat['p50_ms'])} ms, "
        f"p95 {_fmt(lat['p95_ms'])} ms, p99 {_fmt(lat['p99_ms'])} ms",
        highlight=False,
    )
    st = report["steady"]
    if st["requests"]:
        ctl = st["controller"]
        rss = (
            f", controller RSS {ctl['rss_start_mb']:.0f} -> {ctl['rss_end_mb']:.0f} MB, "
            f"CPU {ctl['cpu_pct']}% of a core"
            if ctl["rss_start_mb"] is not None
            else ""
        )
        console.print(
            f"steady state ({st['from_s']:.0f}-{st['to_s']:.0f} s, after warm-up): "
            f"{st['per_second']} req/s, p50 {_fmt(st['p50_ms'])} ms, "
            f"p99 {_fmt(st['p99_ms'])} ms, {st['errors']} errors{rss}",
            highlight=False,
        )
    if report["errors"]:
        kinds = ", ".join(f"{k}: {n}" for k, n in report["errors"].items())
        console.print(f"[red]errors[/red] {escape(kinds)}", highlight=False)
        for kind, first in report["first_errors"].items():
            console.print(f"  first {escape(kind)}: {escape(first)}", highlight=False)
    else:
        console.print("errors: none", highlight=False)
    wait = report["pool_wait"]
    if (wait["p99_ms"] or 0) > 1000 or report["unsent_at_end"]:
        console.print(
            f"[yellow]backlog[/yellow]: requests waited up to "
            f"{(wait['max_ms'] or 0) / 1000:.1f} s for a connection "
            f"(p99 {(wait['p99_ms'] or 0) / 1000:.1f} s) and "
            f"{report['unsent_at_end']} were still waiting at the end: the controller "
            "(or --connections) did not keep up with this fleet",
            highlight=False,
        )
    if report["shed"]:
        console.print(f"shed load (429/503, retried): {report['shed']}", highlight=False)
    ctl = report["controller"]
    ctl_text = (
        f"; controller CPU {ctl['cpu_seconds']:.1f} s, RSS {ctl['rss_start_mb']:.0f} -> "
        f"{ctl['rss_end_mb']:.0f} MB (max {ctl['rss_max_mb']:.0f}) over "
        f"{ctl['processes']} processes"
        if ctl
        else ""
    )
    console.print(
        f"simulator CPU {report['simulator_cpu_seconds']:.1f} s{ctl_text}", highlight=False
    )
    if report.get("storm"):
        _print_storm(report["storm"])


def _print_storm(st: dict[str, Any]) -> None:
    """The reconnect storm in three lines: the return against its budget, what was shed
    and what failed, and whether the controller is still up."""
    if st["all_reported_after_s"] is not None:
        verdict = "within" if st["within_budget"] else "[red]over[/red]"
        back = (
            f"all {st['reported']} online devices reported again "
            f"{st['all_reported_after_s']:.1f} s after the return ({verdict} the "
            f"{st['budget_s']:g} s budget of three intervals)"
        )
    else:
        back = f"[red]{st['missing']} of {st['devices_online']} devices never reported again[/red]"
    lat, ttr, ctl = st["latency"], st["time_to_report"], st["controller"]
    console.print(
        f"storm: outage at {st['outage_at_s']:g} s for {st['outage_for_s']:g} s; {back}; "
        f"time to report p50 {_fmt(ttr['p50_s'])} s, p99 {_fmt(ttr['p99_s'])} s",
        highlight=False,
    )
    errors = ", ".join(f"{k}: {n}" for k, n in st["errors_by_kind"].items()) or "none"
    console.print(
        f"storm: {st['requests']} requests answered (p50 {_fmt(lat['p50_ms'])} ms, p99 "
        f"{_fmt(lat['p99_ms'])} ms), {st['shed']} shed (Retry-After "
        f"{_fmt(st['retry_after_s']['min'], 0)}-{_fmt(st['retry_after_s']['max'], 0)} s), "
        f"errors {escape(errors)}; {st['connections']['opened']} new connections "
        f"(pool {st['connections']['pool']})",
        highlight=False,
    )
    up = {True: "yes", False: "[red]no[/red]", None: "-"}
    console.print(
        f"storm: controller alive {up[ctl['alive_at_end']]}, answering "
        f"{up[ctl['answering_at_end']]}, CPU {_fmt(ctl['cpu_pct'])}% of a core, RSS max "
        f"{_fmt(ctl['rss_max_mb'], 0)} MB; simulator CPU {_fmt(st['simulator_cpu_pct'])}%",
        highlight=False,
    )


def simulate(
    ctx: typer.Context,
    devices: int = typer.Option(..., "--devices", "-n", help="Devices to enrol and run"),
    interval: float = typer.Option(30.0, help="Seconds between a device's reports"),
    duration: float = typer.Option(60.0, help="Seconds to run after enrolment"),
    url: str | None = typer.Option(None, help="Controller URL [env EDGEFLEET_URL]"),
    token: str | None = typer.Option(
        None, help="Operator or admin API token [env EDGEFLEET_TOKEN]"
    ),
    ca_file: Path | None = typer.Option(
        None, help="Root certificate to trust [env EDGEFLEET_CA_FILE]"
    ),
    site: str = typer.Option("sim", help="Site the devices enrol at (made if missing)"),
    profile: str | None = typer.Option(
        None, help="Profile the devices follow (an existing one; none by default)"
    ),
    offline: float = typer.Option(0.0, help="Fraction that enrols, then never reports"),
    flapping: float = typer.Option(0.0, help="Fraction that goes away and comes back"),
    slow: float = typer.Option(0.0, help="Fraction with delayed requests and slow reads"),
    uploading: float = typer.Option(0.0, help="Fraction uploading results every interval"),
    failing_updates: float = typer.Option(
        0.0, help="Fraction that rolls back every new desired revision and reports it"
    ),
    seed: int = typer.Option(0, help="Seed of behaviours, jitter and payloads"),
    connections: int = typer.Option(
        64, help="Shared keep-alive HTTPS connections (0: a new one per request)"
    ),
    enrol_concurrency: int = typer.Option(16, help="Enrolments in flight at once"),
    timeout: float = typer.Option(10.0, help="Seconds a request may take before a timeout"),
    batch: int = typer.Option(10, help="Results per upload of an uploading device"),
    slow_delay: float = typer.Option(1.0, help="Longest wait of a slow device, seconds"),
    bucket: float = typer.Option(1.0, help="Seconds per point of the time series"),
    warmup: float | None = typer.Option(
        None,
        help="Seconds after enrolment before the steady state the summary judges "
        "(default: two intervals)",
    ),
    controller_pid: int | None = typer.Option(
        None, help="Controller's process id: its CPU and RSS (and its workers') from /proc"
    ),
    outage_at: float | None = typer.Option(
        None,
        help="Reconnect storm: seconds into the run when every device falls silent and "
        "its connections drop",
    ),
    outage_for: float = typer.Option(
        30.0, help="Seconds the outage lasts; then every device returns at the same instant"
    ),
    storm_connections: int = typer.Option(
        0,
        help="Connections the returning fleet may open at once (0: one per device, up to "
        "the file descriptor limit)",
    ),
    storm_reauth: bool = typer.Option(
        False, help="Returning devices first ask for a new access token (a long outage)"
    ),
    report: Path | None = typer.Option(None, help="Write the JSON report here"),
    chart: Path | None = typer.Option(None, help="Write a PNG chart here"),
) -> None:
    """Simulate a fleet against a real controller: real keys, CSRs, signed tokens, HTTPS.

    Creates its own registration token (one use per device) at --site, enrols the
    devices, runs them for --duration seconds, and prints requests/s, p50/p95/p99 per
    endpoint, errors by kind and CPU. Exit 1 if any request failed, 2 on bad input.
    """
    from edgefleet.simulate.config import Mix, SimConfig

    root = ctx.find_root().obj
    g = root if isinstance(root, Globals) else Globals(None, None, None)
    try:
        where = config.load(url or g.url, token or g.token, ca_file or g.ca_file)
        cfg = SimConfig(
            url=where.url,
            token=where.token or "",
            ca_file=where.ca_file,
            devices=devices,
            interval=interval,
            duration=duration,
            site=site,
            profile=profile,
            mix=Mix(offline, flapping, slow, uploading, failing_updates),
            seed=seed,
            connections=connections,
            enrol_concurrency=enrol_concurrency,
            timeout=timeout,
            batch=batch,
            slow_delay=slow_delay,
            bucket=bucket,
            warmup=warmup,
            controller_pid=controller_pid,
            outage_at=outage_at,
            outage_for=outage_for,
            storm_connections=storm_connections,
            storm_reauth=storm_reauth,
        )
        for path, flag in ((report, "--report"), (chart, "--chart")):
            if path is not None and not path.parent.is_dir():
                raise ConfigError(f"{flag} {path}: folder {path.parent} does not exist")
        try:
            from edgefleet.simulate import report as reporting
            from edgefleet.simulate.run import run_sync
        except ImportError as exc:  # aiohttp comes with the cli extra
            raise ConfigError(
                f"the simulator needs {exc.name}: pip install 'edgefleet[cli]'"
            ) from exc

        outcome = run_sync(cfg, lambda text: err.print(f"[dim]{escape(text)}[/dim]"))
    except ConfigError as exc:
        err.print(f"[red]error[/red] ({exc.code}): {escape(exc.message)}", highlight=False)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]: no report written")
        raise typer.Exit(130) from None
    doc = reporting.build(outcome)
    _print(doc)
    if report is not None:
        reporting.write(doc, report)
        err.print(f"report written to {report}")
    if chart is not None:
        from edgefleet.simulate.chart import draw

        draw(doc, chart)
        err.print(f"chart written to {chart}")
    if doc["error_count"]:
        raise typer.Exit(1)
    storm = doc.get("storm")
    if storm and not storm["controller"]["answering_at_end"]:
        raise typer.Exit(1)
