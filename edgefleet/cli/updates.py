"""``edgefleet updates list | show``: how devices' update attempts ended, and why.

``show`` renders the rollback evidence a device uploaded: each failed check with its
output, the golden probe's expected against actual values, the latency samples'
p50/p95 against the budget, and the agent's log lines of the attempt. That text comes
from devices, so it is printed as text, never read as Rich markup.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.common import controller, handled
from edgefleet.cli.output import Format, OutputOpt, console, show
from edgefleet.percentile import percentile

app = typer.Typer(help="Update attempts the devices reported.", no_args_is_help=True)
COLUMNS = ["id", "device", "site", "revision", "outcome", "slot", "reason", "finished_at"]
OUTCOME_STYLE = {"committed": "green", "rolled_back": "yellow", "failed": "red"}


@app.command("list")
@handled
def list_(
    ctx: typer.Context,
    device: str | None = typer.Option(None, help="Only this device's updates"),
    outcome: str | None = typer.Option(None, help="committed, rolled_back or failed"),
    limit: int = typer.Option(100, min=1, max=1000),
    output: Format = OutputOpt,
) -> None:
    """The newest update reports first."""
    rows = controller(ctx).get("/updates", device=device, outcome=outcome, limit=limit)
    if output == Format.table:
        rows = [{**row, "reason": escape(row["reason"])} for row in rows]
    show(rows, output, COLUMNS)


@app.command("show")
@handled
def show_(ctx: typer.Context, update_id: int, output: Format = OutputOpt) -> None:
    """One update report with its evidence."""
    report = controller(ctx).get(f"/updates/{update_id}")
    if output == Format.json:
        show(report, output, [])
        return
    render(report)


def render(report: dict[str, Any]) -> None:
    """The report as people read it: outcome and reason first, then the evidence."""
    style = OUTCOME_STYLE.get(report["outcome"], "bold")
    console.print(
        f"update {report['id']}: device {report['device']} ({report['site']}), "
        f"revision {report['revision']} in slot {report['slot'] or '-'}: "
        f"[{style}]{report['outcome']}[/{style}]",
        highlight=False,
    )
    if report["reason"]:
        console.print(f"reason: {report['reason']}", highlight=False, markup=False)
    console.print(f"started {report['started_at']}, finished {report['finished_at']}")
    evidence = report.get("evidence") or {}
    _failed_checks(evidence.get("failed_checks", []))
    _probe(evidence.get("probe", []))
    _latency(evidence.get("latency", []))
    _log(evidence.get("log", []))


def _failed_checks(checks: list[dict[str, Any]]) -> None:
    if not checks:
        return
    console.print("\n[bold]failed checks[/bold]")
    for check in checks:
        what = escape(f"{check['name']}: {check.get('detail', '')}")
        console.print(f"  [red]✗[/red] {what}", highlight=False)
        for line in check.get("output", "").splitlines():
            console.print(f"      {line}", highlight=False, markup=False)


def _probe(mismatches: list[dict[str, Any]]) -> None:
    if not mismatches:
        return
    table = Table("model", "output", "expected", "actual", "detail", title="golden probe")
    for m in mismatches:
        table.add_row(
            escape(m["model"]),
            escape(m["output"]),
            _values(m["expected"]),
            _values(m["actual"]),
            escape(m["detail"]),
        )
    console.print(table)


def _values(values: list[float | None]) -> str:
    shown = ", ".join("nan" if v is None else f"{v:.6g}" for v in values[:8])
    return shown + (f" … ({len(values)} values)" if len(values) > 8 else "")


def _latency(models: list[dict[str, Any]]) -> None:
    if not models:
        return
    table = Table("model", "samples", "p50 ms", "p95 ms", "budget ms", title="latency")
    for m in models:
        samples = m["samples_ms"]
        budget = m.get("budget_ms")
        p95 = percentile(samples, 95) if samples else None
        over = budget is not None and p95 is not None and p95 > budget
        table.add_row(
            escape(m["model"]),
            str(len(samples)),
            f"{percentile(samples, 50):.2f}" if samples else "-",
            ("[red]" if over else "") + (f"{p95:.2f}" if p95 is not None else "-"),
            f"{budget:g}" if budget is not None else "-",
        )
    console.print(table)


def _log(lines: list[str]) -> None:
    if not lines:
        return
    console.print("\n[bold]agent log of the attempt[/bold]")
    for line in lines:
        console.print(f"  {line}", highlight=False, markup=False)


def render_slots(device: dict[str, Any]) -> None:
    """A device's A/B slots and last update outcome, as it last reported them."""
    slots, last = device.get("slots") or [], device.get("last_update")
    if not slots and last is None:
        return
    active = device.get("active_slot")
    table = Table("slot", "state", "revision", "reason", title=f"slots (active: {active or '-'})")
    for slot in slots:
        name = slot["name"] + (" *" if slot["name"] == active else "")
        revision = "-" if slot.get("revision") is None else str(slot["revision"])
        table.add_row(name, slot["state"], revision, escape(slot.get("reason", "")))
    console.print(table)
    if last is not None:
        style = OUTCOME_STYLE.get(last["outcome"], "bold")
        reason = f": {escape(last['reason'])}" if last.get("reason") else ""
        console.print(
            f"last update: revision {last['revision']} in slot {last.get('slot') or '-'} "
            f"[{style}]{last['outcome']}[/{style}] at {last['finished_at']}{reason}",
            highlight=False,
        )
        console.print(f"evidence: edgefleet updates list --device {device['id']}", highlight=False)
