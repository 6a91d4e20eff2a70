"""``edgefleet rollouts plan``: the dry run of a wave rollout, changing nothing.

The plan ends with its seed: the rollout key that ranked the devices into waves. The
same options with ``--seed`` give the same waves for the same selection.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.common import controller, handled
from edgefleet.cli.devices import duration
from edgefleet.cli.output import Format, OutputOpt, console, show
from edgefleet.labels import parse_labels

app = typer.Typer(help="Wave rollouts of a profile revision.", no_args_is_help=True)

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(?:\d+[smhd])+")
MAX_SITES_SHOWN = 4


class OnFailure(StrEnum):
    pause = "pause"
    rollback = "rollback"


class Offline(StrEnum):
    wait = "wait"
    skip = "skip"
    fail = "fail"


def seconds(text: str, option: str = "") -> int:
    """90 (seconds), 30s, 10m, 1h30m, 2d."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    if not DURATION.fullmatch(value):
        raise typer.BadParameter(
            f"{text!r} is not a duration like 90s, 10m, 1h30m or 2d", param_hint=option or None
        )
    return sum(int(n) * UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", value))


@app.command("plan")
@handled
def plan(
    ctx: typer.Context,
    profile: str = typer.Option(..., help="Profile whose devices to update"),
    revision: int | None = typer.Option(None, help="Revision to roll out; default: the latest"),
    label: list[str] = typer.Option([], help="Only devices with key=value (repeat; all match)"),
    site: list[str] = typer.Option([], help="Only devices at this site (repeat)"),
    waves: str = typer.Option("1,10%,100%", help="Cumulative steps: 1,5%,25%,100%"),
    bake: str = typer.Option("10m", help="Bake time per wave before its gates are read"),
    concurrency: int | None = typer.Option(None, min=1, help="Devices updating at once"),
    on_failure: OnFailure = typer.Option(OnFailure.rollback, help="When a gate fails"),
    offline: Offline = typer.Option(Offline.wait, help="Devices offline when their wave starts"),
    offline_deadline: str = typer.Option("1h", help="How long to wait for offline devices"),
    min_success: float = typer.Option(1.0, help="Gate: share of a wave's updates that commit"),
    max_failures: int = typer.Option(0, help="Gate: failed updates tolerated in all"),
    max_p95_ms: float | None = typer.Option(None, help="Gate: inference p95 at most (ms)"),
    max_error_rate: float | None = typer.Option(None, help="Gate: inference error share"),
    ignore_windows: bool = typer.Option(
        False, "--ignore-windows", help="Update sites outside their maintenance windows too"
    ),
    seed: str | None = typer.Option(None, help="Rollout key ranking devices into waves"),
    output: Format = OutputOpt,
) -> None:
    """Show the waves a rollout would make now, and how long it may take (changes nothing)."""
    spec = {
        "profile": profile,
        "revision": revision,
        "labels": parse_labels(label),
        "sites": site,
        "waves": waves,
        "bake_seconds": seconds(bake, "--bake"),
        "gates": {
            "min_success_ratio": min_success,
            "max_failures": max_failures,
            "max_p95_ms": max_p95_ms,
            "max_error_rate": max_error_rate,
        },
        "on_failure": on_failure.value,
        "offline": offline.value,
        "offline_deadline_seconds": seconds(offline_deadline, "--offline-deadline"),
        "concurrency": concurrency,
        "respect_windows": not ignore_windows,
        "seed": seed,
    }
    result = controller(ctx).post("/rollouts/plan", spec)
    if output == Format.json:
        show(result, output, [])
        return
    render(result)


def render(plan: dict[str, Any]) -> None:
    """The waves as a table, then the totals, the seed and any warnings."""
    table = Table("wave", "step", "devices", "offline", "sites", "closed now / opens at")
    for wave in plan["waves"]:
        table.add_row(
            str(wave["wave"]),
            escape(wave["step"]),
            str(wave["devices"]),
            _offline(wave["offline"]),
            escape(_sites(wave["sites"])),
            escape(_closed(wave)),
        )
    console.print(table)
    following = plan["following"]
    now = (
        f"revision {next(iter(following))}"
        if len(following) == 1
        else "revisions " + ", ".join(f"{rev} ({n} devices)" for rev, n in following.items())
    )
    console.print(
        f"profile {escape(plan['profile'])}: roll out revision {plan['revision']} "
        f"(latest {plan['latest_revision']}); the devices follow {now} now",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"{plan['devices']} devices at {plan['sites']} site(s), {plan['offline']} offline; "
        f"expected duration {duration(plan['expected_seconds'])}" + _offline_wait(plan),
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"seed {escape(plan['seed'])}: the same options with --seed {escape(plan['seed'])} "
        "give these waves",
        highlight=False,
        soft_wrap=True,
    )
    for warning in plan["warnings"]:
        console.print(
            f"[yellow]warning[/yellow]: {escape(warning)}", highlight=False, soft_wrap=True
        )


def _offline(count: int) -> str:
    return f"[yellow]{count}[/yellow]" if count else "0"


def _sites(sites: list[str]) -> str:
    shown = ", ".join(sites[:MAX_SITES_SHOWN])
    more = len(sites) - MAX_SITES_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "") if sites else "-"


def _closed(wave: dict[str, Any]) -> str:
    closed = wave["sites_closed_now"]
    if not closed:
        return "-"
    opens = datetime.fromisoformat(wave["opens_at"]).astimezone(UTC)
    return f"{_sites(closed)} / {opens:%Y-%m-%d %H:%M} UTC"


def _offline_wait(plan: dict[str, Any]) -> str:
    wait = plan["offline_wait_seconds"]
    if not wait:
        return ""
    return f" (and up to {duration(wait)} more waiting for offline devices)"
