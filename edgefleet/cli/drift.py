"""``edgefleet drift show``: drift of the fleet's models against their references.

One row per site, profile, model version and reference (``--by device``: per device),
its latest window's worst PSI, KS and JS (the histogram they come from), and its level
against the profile's thresholds: ok, INVESTIGATE or ACT. Groups in alert are counted
below the table; ``-o json`` prints the API's answer, scores over time included.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.common import controller, handled
from edgefleet.cli.output import Format, OutputOpt, console, show

app = typer.Typer(
    help="Drift of live traffic against the models' references.", no_args_is_help=True
)

LEVEL_STYLE = {
    "ok": "ok",
    "investigate": "[yellow]INVESTIGATE[/yellow]",
    "act": "[bold red]ACT[/bold red]",
}


@app.command("show")
@handled
def show_(
    ctx: typer.Context,
    site: str | None = typer.Option(None, help="only this site"),
    model: str | None = typer.Option(None, help="only this model (its name in the profile)"),
    by: str = typer.Option("site", help="site (devices summed) or device"),
    hours: float = typer.Option(24.0, help="windows that started in the last HOURS"),
    output: Format = OutputOpt,
) -> None:
    """Show each group's latest drift window and level; the alerts below."""
    if by not in ("site", "device"):
        raise typer.BadParameter(f"{by!r}: use site or device", param_hint="--by")
    if not hours > 0:
        raise typer.BadParameter("give a positive number of hours", param_hint="--hours")
    doc = controller(ctx).get("/drift", site=site, model=model, by=by, hours=hours)
    if output == Format.json:
        show(doc, output, [])
        return
    table = Table(
        *(["DEVICE"] if by == "device" else []),
        "SITE",
        "PROFILE",
        "MODEL",
        "VERSION",
        "WINDOW",
        "DEVICES",
        "SAMPLES",
        "PSI",
        "KS",
        "JS",
        "WORST",
        "LEVEL",
    )
    for g in doc["groups"]:
        latest = g["latest"]
        table.add_row(
            *([escape(g.get("device_name") or g["device"])] if by == "device" else []),
            escape(g["site"]),
            escape(g["profile"] or "-"),
            escape(g["model"]),
            g["version"].split(":", 1)[-1][:12],
            _window(latest),
            str(latest["devices"]),
            str(latest["samples"]),
            *(_score(latest[k]) for k in ("psi", "ks", "js")),
            escape(latest["histogram"] or "-"),
            LEVEL_STYLE.get(g["level"], "-")
            + ("" if g["scored_by"] == "controller" else " (device)"),
        )
    console.print(table)
    alerts = doc["alerts"]
    noun = "alert" if len(alerts) == 1 else "alerts"
    console.print(f"{len(alerts)} {noun} in {len(doc['groups'])} group(s)", highlight=False)


def _window(point: dict[str, Any]) -> str:
    start = datetime.fromtimestamp(point["start"], UTC)
    return f"{start:%Y-%m-%d %H:%M}Z +{point['seconds']}s"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
