"""``edgefleet controller registry-config``: what docker-registry (distribution) needs to
take the controller as its token issuer. Runs on the controller's data directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
import yaml

from edgefleet.cli.common import handled
from edgefleet.cli.controller import ConfigOpt, DataDirOpt, controller_settings


@handled
def registry_config(
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    bundle: Path | None = typer.Option(
        None,
        "--bundle",
        help="Copy the token-signing certificate here, the path the registry will read",
    ),
) -> None:
    """Print the registry's `auth:` block (realm, service, issuer, rootcertbundle).

    The bundle holds only the controller's token-signing certificate, never the fleet's
    root: the registry then accepts tokens from the controller and from no device. After
    `edgefleet keys rotate registry`, give the registry `edgefleet keys bundle` instead.
    """
    from edgefleet.controller.pki.registry_key import load_token_key
    from edgefleet.controller.registry_tokens import registry_auth_config

    settings = controller_settings(config=config, data_dir=data_dir)
    path = load_token_key(settings.data_dir / "pki", settings.key_passphrase_bytes()).bundle
    if bundle is not None:
        shutil.copyfile(path, bundle)
        path = bundle
    block = {"auth": registry_auth_config(settings, path.resolve())}
    typer.echo(yaml.safe_dump(block, sort_keys=False), nl=False)
