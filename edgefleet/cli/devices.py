"""``edgefleet devices list | show | approve | reject | decommission | assign``."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cli.common import controller, handled
from edgefleet.cli.gitops import gitops_note
from edgefleet.cli.output import Format, OutputOpt, show
from edgefleet.cli.updates import render_slots
from edgefleet.readable import duration

app = typer.Typer(help="Devices in the fleet.", no_args_is_help=True)
COLUMNS = ["id", "state", "site", "profile", "serial", "applied_revision", "last_seen_at", "lag"]


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    """Table cells: ``lag`` is the result lag (age of the oldest result the controller does
    not hold yet) in words; JSON keeps ``result_lag_seconds`` as the API gives it."""
    drops = row.get("buffer_drops") or None
    return {**row, "lag": duration(row.get("result_lag_seconds")), "buffer_drops": drops}


def _show(rows: list[dict[str, Any]] | dict[str, Any], output: Format, columns: list[str]) -> None:
    if output == Format.table:
        rows = [_readable(r) for r in rows] if isinstance(rows, list) else _readable(rows)
    show(rows, output, columns)


@app.command("list")
@handled
def list_(
    ctx: typer.Context,
    site: str | None = typer.Option(None),
    state: str | None = typer.Option(None),
    label: list[str] = typer.Option([], help="key=value (repeat; all must match)"),
    output: Format = OutputOpt,
) -> None:
    """List devices, optionally filtered by site, state and labels."""
    rows = controller(ctx).get("/devices", site=site, state=state, label=label or None)
    _show(rows, output, COLUMNS)


@app.command("show")
@handled
def show_(ctx: typer.Context, device_id: str, output: Format = OutputOpt) -> None:
    device = controller(ctx).get(f"/devices/{device_id}")
    _show(device, output, [*COLUMNS, "buffer_depth", "buffer_drops", "inventory"])
    if output == Format.table:
        render_slots(device)


def _action(verb: str, doc: str) -> None:
    @handled
    def command(ctx: typer.Context, device_id: str, output: Format = OutputOpt) -> None:
        result = controller(ctx).post(f"/devices/{device_id}/{verb}")
        _show(result, output, COLUMNS)
        gitops_note(result, output)

    command.__doc__ = doc
    app.command(verb)(command)


_action("approve", "Approve a device waiting for approval: it is enrolled at once.")
_action("reject", "Reject a waiting device: it can never enrol with that key.")
_action("decommission", "Decommission a device: its credentials stop working at once.")
_action(
    "retry-update",
    "Let a device try its desired revision again where a slot rolled it back.",
)


@app.command("assign")
@handled
def assign(
    ctx: typer.Context,
    device_id: str,
    profile: str,
    revision: int | None = typer.Option(
        None, min=1, help="Pin this revision (default: follow the latest)"
    ),
    output: Format = OutputOpt,
) -> None:
    """Give a device a profile; its desired state and the fleet repository follow at once."""
    body = {"profile": profile, "revision": revision}
    result = controller(ctx).post(f"/devices/{device_id}/assign", body)
    _show(result, output, COLUMNS)
    gitops_note(result, output)
