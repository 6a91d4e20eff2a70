"""``edgefleet keys list | rotate | promote | retire | bundle | encrypt``: the controller's
signing keys. Rotation goes through the API (admins), so every replica sees it at once;
``encrypt`` works on a data directory, like ``edgefleet pki``."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.cli.common import controller, handled
from edgefleet.cli.controller import ConfigOpt, DataDirOpt, controller_settings
from edgefleet.cli.output import Format, OutputOpt, show

app = typer.Typer(
    help="Signing keys: access tokens, registry tokens (rotation), keys at rest.",
    no_args_is_help=True,
)
COLUMNS = ["kind", "kid", "state", "signing", "source", "created_at", "retire_after"]
KindArg = typer.Argument(..., help="access or registry (registration tokens have no key)")


@app.command("list")
@handled
def list_(ctx: typer.Context, output: Format = OutputOpt) -> None:
    """Every signing key, its state and until when a previous one still verifies."""
    show(controller(ctx).get("/keys"), output, COLUMNS)


@app.command()
@handled
def rotate(ctx: typer.Context, kind: str = KindArg) -> None:
    """access: a new key signs at once, the old verifies until its tokens expire.
    registry: a new key is staged in the bundle; restart the registry with it, then
    `edgefleet keys promote registry`."""
    done = controller(ctx).post(f"/keys/{kind}/rotate")
    typer.echo(f"{done['kind']} key {done['kid']} is {done['state']}")
    if done["state"] == "staged":
        typer.echo(
            "next: `edgefleet keys bundle > BUNDLE`, point the registry's "
            "auth.token.rootcertbundle at it, restart the registry, then "
            "`edgefleet keys promote registry`"
        )


@app.command()
@handled
def promote(ctx: typer.Context, kind: str = KindArg) -> None:
    """Make the staged registry key the signing key (after the registry has its bundle)."""
    done = controller(ctx).post(f"/keys/{kind}/promote")
    typer.echo(f"{done['kind']} key {done['kid']} is {done['state']}")


@app.command()
@handled
def retire(ctx: typer.Context, kind: str = KindArg, kid: str = typer.Argument(...)) -> None:
    """Refuse a previous key now, before its tokens have expired (a suspected leak)."""
    done = controller(ctx).post(f"/keys/{kind}/{kid}/retire")
    typer.echo(f"{done['kind']} key {done['kid']} is {done['state']}")


@app.command()
@handled
def bundle(ctx: typer.Context) -> None:
    """Print the registry's rootcertbundle (PEM): every registry key it must trust now."""
    typer.echo(controller(ctx).text("/registry/bundle"), nl=False)


@app.command()
@handled
def encrypt(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Encrypt the data directory's plain PKI private keys in place with the passphrase
    from EDGEFLEET_KEY_PASSPHRASE or EDGEFLEET_KEY_PASSPHRASE_FILE. Stop the controller
    first, and start it again with the same passphrase setting."""
    from edgefleet.controller.pki.certs import encrypt_keys
    from edgefleet.errors import ConfigError

    settings = controller_settings(config=config, data_dir=data_dir)
    passphrase = settings.key_passphrase_bytes()
    if passphrase is None:
        raise ConfigError(
            "set EDGEFLEET_KEY_PASSPHRASE (or EDGEFLEET_KEY_PASSPHRASE_FILE) to the "
            "passphrase to encrypt the keys with"
        )
    done = encrypt_keys(settings.data_dir / "pki", passphrase)
    for path in done:
        typer.echo(f"encrypted {path}")
    typer.echo(f"{len(done)} key(s) encrypted" if done else "every key was encrypted already")
