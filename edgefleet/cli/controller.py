"""``edgefleet controller serve | migrate | pin``."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.cli.common import handled

app = typer.Typer(help="Run and set up the controller.", no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", help="YAML config file [env EDGEFLEET_CONFIG]")
DataDirOpt = typer.Option(None, "--data-dir", help="[env EDGEFLEET_DATA_DIR]")
DbOpt = typer.Option(None, "--database-url", help="[env EDGEFLEET_DATABASE_URL]")


def controller_settings(**flags: object):  # type: ignore[no-untyped-def]
    try:
        from edgefleet.controller.settings import load_settings
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise typer.BadParameter(
            "the controller is not installed here: pip install 'edgefleet[controller]'"
        ) from exc
    return load_settings(**flags)


@app.command()
@handled
def serve(
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
    host: str | None = typer.Option(None, help="[env EDGEFLEET_HOST, default 127.0.0.1]"),
    port: int | None = typer.Option(None, help="[env EDGEFLEET_PORT, default 8443]"),
    workers: int | None = typer.Option(None, help="[env EDGEFLEET_WORKERS, default: cores]"),
    public_url: str | None = typer.Option(None, help="URL devices use [EDGEFLEET_PUBLIC_URL]"),
    server_name: list[str] | None = typer.Option(
        None, help="Name or IP in the server certificate (repeat) [EDGEFLEET_SERVER_NAMES]"
    ),
) -> None:
    """Run the controller over HTTPS (sets up the data directory on first start)."""
    from edgefleet.controller.serve import serve as run

    run(
        controller_settings(
            config=config,
            data_dir=data_dir,
            database_url=database_url,
            host=host,
            port=port,
            workers=workers,
            public_url=public_url,
            server_names=server_name or None,
        )
    )


@app.command()
@handled
def migrate(
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
) -> None:
    """Create or upgrade the schema and the PKI without serving."""
    from edgefleet.controller.bootstrap import prepare
    from edgefleet.controller.serve import announce

    settings = controller_settings(config=config, data_dir=data_dir, database_url=database_url)
    announce(settings, prepare(settings))


@app.command()
@handled
def pin(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Print the root's SPKI pin (sha256:<hex>) for registration files and QR codes."""
    from cryptography import x509

    from edgefleet.signing import cert_pin

    settings = controller_settings(config=config, data_dir=data_dir)
    root = settings.data_dir / "pki" / "root.pem"
    if not root.exists():
        raise typer.BadParameter(f"{root} does not exist; run `edgefleet controller migrate`")
    typer.echo(cert_pin(x509.load_pem_x509_certificate(root.read_bytes())))
