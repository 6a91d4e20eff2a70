"""``edgefleet tokens create | list | revoke``."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from edgefleet.cli.common import controller, handled
from edgefleet.cli.output import Format, OutputOpt, show
from edgefleet.labels import parse_labels

app = typer.Typer(help="Registration tokens for zero-touch enrolment.", no_args_is_help=True)
COLUMNS = [
    "kid",
    "site",
    "profile",
    "uses",
    "max_uses",
    "expires_at",
    "require_approval",
    "revoked_at",
]


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (ValueError, IndexError) as exc:
        raise typer.BadParameter(f"{text!r} is not a duration like 90m, 12h or 7d") from exc


@app.command()
@handled
def create(
    ctx: typer.Context,
    site: str = typer.Option(..., help="Site the devices belong to"),
    profile: str | None = typer.Option(None, help="Profile the devices get"),
    label: list[str] = typer.Option([], help="key=value label for the devices (repeat)"),
    expires: str = typer.Option("7d", help="Lifetime: 90m, 12h, 7d; 'never' for none"),
    uses: int | None = typer.Option(None, min=1, help="How many devices may enrol with it"),
    approval: bool = typer.Option(False, "--approval", help="Hold devices for an operator"),
    serial: list[str] = typer.Option([], help="Allow only these serial numbers (repeat)"),
    hardware_id: list[str] = typer.Option([], help="Allow only these hardware ids (repeat)"),
    description: str = typer.Option("", help="A note for other operators"),
    output_file: Path | None = typer.Option(
        None, "--output-file", "--registration", help="Write the registration file here"
    ),
    output: Format = OutputOpt,
) -> None:
    """Create a token. Its secret is shown once: keep the registration file safe."""
    body = {
        "site": site,
        "profile": profile,
        "labels": parse_labels(label),
        "expires_in_seconds": None if expires == "never" else _duration(expires),
        "max_uses": uses,
        "require_approval": approval,
        "allowed_serials": serial,
        "allowed_hardware_ids": hardware_id,
        "description": description,
    }
    created = controller(ctx).post("/tokens", body)
    if output_file is not None:
        import os

        fd = os.open(output_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(created["registration"], f, sort_keys=False)
    if output == Format.json:
        show(created, output, [])
        return
    show(created, output, COLUMNS)
    typer.echo(f"token (shown once): {created['token']}")
    if output_file is not None:
        typer.echo(f"registration file written to {output_file} (mode 0600)")


@app.command("list")
@handled
def list_(ctx: typer.Context, output: Format = OutputOpt) -> None:
    """List tokens (never their secrets)."""
    show(controller(ctx).get("/tokens"), output, COLUMNS)


@app.command()
@handled
def revoke(ctx: typer.Context, kid: str, output: Format = OutputOpt) -> None:
    """Revoke a token: no further device can enrol with it."""
    show(controller(ctx).post(f"/tokens/{kid}/revoke"), output, COLUMNS)
