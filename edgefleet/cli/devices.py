"""``edgefleet devices list | show | approve | reject | decommission | assign | rename |
replace | history``."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from edgefleet.cli.common import controller, handled
from edgefleet.cli.gitops import gitops_note
from edgefleet.cli.output import Format, OutputOpt, console, show
from edgefleet.cli.updates import render_slots
from edgefleet.readable import duration

app = typer.Typer(help="Devices in the fleet.", no_args_is_help=True)
COLUMNS = [
    "id",
    "name",
    "state",
    "site",
    "profile",
    "serial",
    "applied_revision",
    "last_seen_at",
    "lag",
]


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
    search: str | None = typer.Option(
        None, "--search", "-q", help="Part of a name, serial or hostname, or an id prefix"
    ),
    output: Format = OutputOpt,
) -> None:
    """List devices, optionally filtered by site, state, labels and a search."""
    rows = controller(ctx).get("/devices", site=site, state=state, label=label or None, q=search)
    _show(rows, output, COLUMNS)


@app.command("show")
@handled
def show_(ctx: typer.Context, device_id: str, output: Format = OutputOpt) -> None:
    device = controller(ctx).get(f"/devices/{device_id}")
    extra = ["replaces", "replaced_by", "buffer_depth", "buffer_drops", "inventory"]
    _show(device, output, [*COLUMNS, *extra])
    if output == Format.table:
        render_slots(device)
        render_gitops(device)


def render_gitops(device: dict[str, Any]) -> None:
    """K3s devices: what the site's Flux or Argo CD says about the device's folder, as the
    agent last reported it (``status.gitops``; JSON output has it as it is)."""
    gitops = (device.get("status") or {}).get("gitops")
    if not gitops:
        return
    synced = "synced" if gitops.get("synced") else "[bold red]not synced[/bold red]"
    healthy = "healthy" if gitops.get("healthy") else "[bold red]not healthy[/bold red]"
    revision = escape(gitops.get("revision") or "-")
    message = f": {escape(gitops['message'])}" if gitops.get("message") else ""
    console.print(
        f"gitops: {gitops['applier']} {synced}, {healthy}, revision {revision}{message}",
        highlight=False,
    )


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


@app.command("rename")
@handled
def rename(
    ctx: typer.Context,
    device_id: str,
    name: str = typer.Argument(..., help="What people at the site call it; '' clears it"),
    output: Format = OutputOpt,
) -> None:
    """Name a device (unique among the serving devices of its site)."""
    result = controller(ctx).post(f"/devices/{device_id}/rename", {"name": name or None})
    _show(result, output, COLUMNS)


@app.command("replace")
@handled
def replace(
    ctx: typer.Context,
    old: str = typer.Argument(..., help="The device being replaced (it is decommissioned)"),
    new: str = typer.Argument(..., help="The enrolled device that takes its place"),
    reason: str = typer.Option("", help="Why, for the audit log and the fleet repository"),
    across_sites: bool = typer.Option(
        False, "--across-sites", help="Move NEW to OLD's site if it enrolled elsewhere"
    ),
    output: Format = OutputOpt,
) -> None:
    """Hand OLD's name, labels, profile and history to NEW, and decommission OLD."""
    body = {"new": new, "reason": reason, "across_sites": across_sites}
    result = controller(ctx).post(f"/devices/{old}/replace", body)
    _show(result, output, [*COLUMNS, "replaces"])
    if output == Format.table:
        typer.echo(f"{old} was decommissioned; {new} took its place")
    gitops_note(result, output)


@app.command("history")
@handled
def history(ctx: typer.Context, device_id: str, output: Format = OutputOpt) -> None:
    """The devices this one replaced (and that replaced it), and their update reports."""
    found = controller(ctx).get(f"/devices/{device_id}/history")
    if output == Format.json:
        show(found, output, [])
        return
    lineage = ["id", "name", "state", "serial", "enrolled_at", "decommissioned_at"]
    show(found["lineage"], output, lineage)
    if found["updates"]:
        show(found["updates"], output, ["device", "revision", "outcome", "reason", "finished_at"])
