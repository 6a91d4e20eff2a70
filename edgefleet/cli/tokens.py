"""``edgefleet tokens create | list | revoke``."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

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
    "replaces",
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
    site: str | None = typer.Option(
        None, help="Site the devices belong to (with --replaces: that device's)"
    ),
    profile: str | None = typer.Option(None, help="Profile the devices get"),
    label: list[str] = typer.Option([], help="key=value label for the devices (repeat)"),
    expires: str = typer.Option("7d", help="Lifetime: 90m, 12h, 7d; 'never' for none"),
    uses: int | None = typer.Option(None, min=1, help="How many devices may enrol with it"),
    approval: bool | None = typer.Option(
        None,
        "--approval/--no-approval",
        help="Hold devices for an operator (default: only with --qr)",
        show_default=False,
    ),
    serial: list[str] = typer.Option([], help="Allow only these serial numbers (repeat)"),
    hardware_id: list[str] = typer.Option([], help="Allow only these hardware ids (repeat)"),
    description: str = typer.Option("", help="A note for other operators"),
    replaces: str | None = typer.Option(
        None,
        help="Replacement mode: the one device that enrols with it takes this device's "
        "place (name, labels, profile) and this one is decommissioned, no operator step",
    ),
    output_file: Path | None = typer.Option(
        None, "--output-file", "--registration", help="Write the registration file here"
    ),
    qr: Path | None = typer.Option(
        None,
        "--qr",
        help="Also make a short enrolment code and write its printable QR label here "
        "(.png or .svg); such a token holds devices for approval unless --no-approval",
    ),
    output: Format = OutputOpt,
) -> None:
    """Create a token. Its secret is shown once: keep the registration file safe."""
    if qr is not None and qr.suffix.lower() not in (".png", ".svg"):
        raise typer.BadParameter(f"{qr} must end in .png or .svg", param_hint="--qr")
    body: dict[str, Any] = {
        "site": site,
        "profile": profile,
        "labels": parse_labels(label),
        "expires_in_seconds": None if expires == "never" else _duration(expires),
        "max_uses": uses,
        "require_approval": approval,
        "allowed_serials": serial,
        "allowed_hardware_ids": hardware_id,
        "description": description,
        "qr": qr is not None,
        "replaces": replaces,
    }
    created = controller(ctx).post("/tokens", body)
    if output_file is not None:
        with _private(output_file, "w") as f:
            yaml.safe_dump(created["registration"], f, sort_keys=False)
    if qr is not None:
        _write_label(qr, created["qr"])
    if output == Format.json:
        show(created, output, [])
        return
    show(created, output, COLUMNS)
    typer.echo(f"token (shown once): {created['token']}")
    if output_file is not None:
        typer.echo(f"registration file written to {output_file} (mode 0600)")
    if qr is not None:
        facts = created["qr"]
        typer.echo(f"QR payload (shown once): {facts['payload']}")
        typer.echo(
            f"QR label written to {qr} (mode 0600): version {facts['version']}, "
            f"{facts['modules']}x{facts['modules']} modules, error correction "
            f"{facts['error_correction']}"
        )


def _private(path: Path, mode: str) -> Any:
    """A file only its owner can read: it holds a secret that enrols devices."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, mode)


def _write_label(path: Path, facts: dict[str, Any]) -> None:
    """Write the label in the format the file name asks for; the JSON then names the file
    instead of carrying both images."""
    if path.suffix.lower() == ".png":
        with _private(path, "wb") as f:
            f.write(base64.b64decode(facts["png_base64"]))
    else:
        with _private(path, "w") as f:
            f.write(facts["svg"])
    del facts["png_base64"], facts["svg"]
    facts["label_file"] = str(path)


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
