"""``edgefleet login``: trust a controller by its root pin and remember the credential."""

from __future__ import annotations

from pathlib import Path

import httpx
import typer

from edgefleet.cli import config
from edgefleet.cli.common import handled
from edgefleet.errors import EdgefleetError
from edgefleet.signing import pick_pinned_root
from edgefleet.wire import API_PREFIX


@handled
def login(
    url: str = typer.Argument(..., help="Controller URL, e.g. https://fleet.example:8443"),
    token: str = typer.Option(..., help="Your operator API token"),
    pin: list[str] = typer.Option(..., help="Root pin sha256:<hex> (`edgefleet controller pin`)"),
) -> None:
    """Fetch the controller's chain, accept it only if a pin matches, save the config."""
    try:
        chain = httpx.get(url.rstrip("/") + API_PREFIX + "/pki/chain", verify=False, timeout=15)
        chain.raise_for_status()
    except httpx.HTTPError as exc:
        raise EdgefleetError(
            f"cannot fetch the chain from {url}: {exc}", code="unreachable"
        ) from exc
    roots = pick_pinned_root(chain.text, pin)
    ca_file = config.config_path().with_name("ca.pem")
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    from cryptography.hazmat.primitives import serialization

    ca_file.write_bytes(b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots))
    path = config.save(url.rstrip("/"), token, Path(ca_file))
    typer.echo(f"logged in to {url}; settings in {path}")
