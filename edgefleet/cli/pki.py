"""``edgefleet pki rotate | promote | show``: the controller's CA rotation, on its data
directory. Restart the controller (replica by replica) after each step."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.cli.common import handled
from edgefleet.cli.controller import ConfigOpt, DataDirOpt, controller_settings

app = typer.Typer(help="The controller's certificate authority.", no_args_is_help=True)


@app.command()
@handled
def show(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Print the roots devices trust now, and whether a rotation is staged."""
    from edgefleet.controller.pki.authority import load_authority
    from edgefleet.signing import cert_pin

    settings = controller_settings(config=config, data_dir=data_dir)
    auth = load_authority(settings.data_dir / "pki", settings.key_passphrase_bytes())
    typer.echo(f"current root   {cert_pin(auth.root)}  {auth.root.subject.rfc4514_string()}")
    if auth.next_root is not None:
        typer.echo(f"next root      {cert_pin(auth.next_root)}  (staged; promote when ready)")
    if auth.previous_root is not None:
        typer.echo(f"previous root  {cert_pin(auth.previous_root)}  (still vouches for current)")


@app.command()
@handled
def rotate(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Stage a next root and intermediates, cross-signed by the current root.

    After a restart, every device's desired state carries the next root; new
    registration files pin both roots. Promote once the fleet has it.
    """
    from edgefleet.controller.pki.authority import stage_rotation
    from edgefleet.signing import cert_pin

    settings = controller_settings(config=config, data_dir=data_dir)
    root = stage_rotation(settings.data_dir / "pki", settings.key_passphrase_bytes())
    typer.echo(f"staged next root {cert_pin(root)}")
    typer.echo("restart the controller so devices receive it, then `edgefleet pki promote`")


@app.command()
@handled
def promote(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Make the staged hierarchy current (server and new device certificates)."""
    from edgefleet.controller.pki.authority import promote_rotation
    from edgefleet.signing import cert_pin

    settings = controller_settings(config=config, data_dir=data_dir)
    root = promote_rotation(
        settings.data_dir / "pki", settings.server_names, settings.key_passphrase_bytes()
    )
    typer.echo(f"promoted root {cert_pin(root)}; restart the controller to serve it")
