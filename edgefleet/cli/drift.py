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


@app.command("agreement")
@handled
def agreement(
    ctx: typer.Context,
    site: str | None = typer.Option(None, help="only this site"),
    model: str | None = typer.Option(None, help="only this model (its name in the profile)"),
    key: str | None = typer.Option(
        None, help="only this comparison: parent (INT8 vs full precision) or rollout-<id>"
    ),
    by: str = typer.Option("site", help="site, device, model or profile"),
    hours: float = typer.Option(24.0, help="windows that started in the last HOURS"),
    output: Format = OutputOpt,
) -> None:
    """Shadow comparisons: how often a candidate (a quantized model's full-precision
    parent, a rollout's new model) picks the active model's top-1 class, how far their
    outputs lie apart, and the latency of each (the mean of the windows' p95)."""
    if by not in ("site", "device", "model", "profile"):
        raise typer.BadParameter(f"{by!r}: use site, device, model or profile", param_hint="--by")
    if not hours > 0:
        raise typer.BadParameter("give a positive number of hours", param_hint="--hours")
    doc = controller(ctx).get(
        "/drift/agreement", site=site, model=model, key=key, by=by, hours=hours
    )
    if output == Format.json:
        show(doc, output, [])
        return
    heads = {"site": ["SITE"], "device": ["DEVICE", "SITE"], "profile": ["PROFILE"], "model": []}
    table = Table(
        *heads[by],
        "KEY",
        "MODEL",
        "CANDIDATE",
        "DEVICES",
        "COMPARED",
        "TOP-1 AGREE",
        "MAD",
        "MAX DIFF",
        "P95 ACTIVE",
        "P95 CANDIDATE",
    )
    for g in doc["groups"]:
        lead = {
            "site": [g.get("site")],
            "device": [g.get("device_name") or g.get("device"), g.get("site")],
            "profile": [g.get("profile")],
            "model": [],
        }[by]
        table.add_row(
            *(escape(str(v or "-")) for v in lead),
            escape(g["key"]),
            escape(g["model"]),
            g["candidate"].split(":", 1)[-1][:12],
            str(g["devices"]),
            str(g["compared"]),
            "-" if g["agreement"] is None else f"{g['agreement']:.1%}",
            _figure(g["mad"]),
            _figure(g["max_abs_diff"]),
            _ms(g["active_p95_ms"]),
            _ms(g["candidate_p95_ms"]),
        )
    console.print(table)
    console.print(f"{len(doc['groups'])} comparison(s)", highlight=False)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"
