"""``edgefleet claims list | show | approve | reject``: QR claims shown by devices that
were flashed without a token. Compare the code the device shows with the one here
before approving."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cli.common import controller, handled
from edgefleet.cli.output import Format, OutputOpt, show
from edgefleet.labels import parse_labels
from edgefleet.readable import duration

app = typer.Typer(help="Claims shown by devices waiting to be let in.", no_args_is_help=True)
COLUMNS = ["id", "code", "state", "serial", "hostname", "age", "left"]
"""``left``: time until a pending claim expires."""
DETAIL = [
    *COLUMNS,
    "remote_addr",
    "hardware_id",
    "model",
    "expires_at",
    "site",
    "profile",
    "labels",
    "name",
    "decided_by",
    "decided_at",
    "device_id",
    "reason",
]


def _show(rows: list[dict[str, Any]], output: Format) -> None:
    show([_readable(r) for r in rows] if output == Format.table else rows, output, COLUMNS)


def _show_one(claim: dict[str, Any], output: Format) -> None:
    """One claim, a field a line (wide enough for any terminal)."""
    if output == Format.json:
        show(claim, output, DETAIL)
        return
    row = _readable(claim)
    show([{"field": name, "value": row.get(name)} for name in DETAIL], output, ["field", "value"])


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    """Table cells: ages and time left in words; JSON keeps the API's seconds."""
    return {
        **row,
        "age": duration(row.get("age_seconds")),
        "left": duration(row.get("expires_in_seconds")),
    }


@app.command("list")
@handled
def list_(
    ctx: typer.Context,
    state: str | None = typer.Option(
        None, help="pending, approved, rejected or expired (default: all)"
    ),
    output: Format = OutputOpt,
) -> None:
    """Claims, newest first; installers see pending ones and their own site's."""
    _show(controller(ctx).get("/claims", state=state), output)


@app.command("show")
@handled
def show_(ctx: typer.Context, claim_id: str, output: Format = OutputOpt) -> None:
    """One claim: the code to compare and what the device says about itself."""
    _show_one(controller(ctx).get(f"/claims/{claim_id}"), output)


@app.command("approve")
@handled
def approve(
    ctx: typer.Context,
    claim_id: str,
    site: str = typer.Option(..., help="The site the device joins (an installer: their own)"),
    profile: str | None = typer.Option(None, help="The profile it follows"),
    label: list[str] = typer.Option([], help="key=value (repeat)"),
    name: str | None = typer.Option(None, help='What the site calls it ("till-3")'),
    output: Format = OutputOpt,
) -> None:
    """Enrol the device that shows this claim: it is enrolled at once."""
    body = {"site": site, "profile": profile, "labels": parse_labels(label), "name": name}
    result = controller(ctx).post(f"/claims/{claim_id}/approve", body)
    _show_one(result, output)


@app.command("reject")
@handled
def reject(
    ctx: typer.Context,
    claim_id: str,
    reason: str = typer.Option("", help="Shown on the device, and kept in the audit log"),
    output: Format = OutputOpt,
) -> None:
    """Turn the device away: its agent stops (a restart shows a new claim)."""
    result = controller(ctx).post(f"/claims/{claim_id}/reject", {"reason": reason})
    _show_one(result, output)
