"""The ``edgefleet`` Typer app: one sub-app per noun."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.cli import (
    agent_status,
    claims,
    controller,
    devices,
    drift,
    gitops,
    image,
    keys,
    localfleet,
    login,
    models,
    pki,
    registry,
    results,
    rollouts,
    simulate,
    sites,
    tokens,
    updates,
    users,
)
from edgefleet.cli.common import Globals

app = typer.Typer(
    name="edgefleet",
    help="Edgefleet: enrol, configure and update fleets of edge devices.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    url: str | None = typer.Option(None, help="Controller URL [env EDGEFLEET_URL]"),
    token: str | None = typer.Option(None, help="Operator API token [env EDGEFLEET_TOKEN]"),
    ca_file: Path | None = typer.Option(
        None, help="Root certificate to trust [env EDGEFLEET_CA_FILE]"
    ),
) -> None:
    if isinstance(ctx.obj, Globals):  # handed in by an embedding program or a test
        ctx.obj.url = url or ctx.obj.url
        ctx.obj.token = token or ctx.obj.token
        ctx.obj.ca_file = ca_file or ctx.obj.ca_file
    else:
        ctx.obj = Globals(url, token, ca_file)


app.add_typer(controller.app, name="controller")
controller.app.command("registry-config")(registry.registry_config)
app.add_typer(tokens.app, name="tokens")
app.add_typer(devices.app, name="devices")
app.add_typer(users.app, name="users")
app.add_typer(sites.app, name="sites")
app.add_typer(sites.profiles, name="profiles")
app.add_typer(pki.app, name="pki")
app.add_typer(keys.app, name="keys")
app.add_typer(localfleet.app, name="dev")
app.add_typer(image.app, name="image")
app.add_typer(gitops.app, name="gitops")
app.add_typer(models.app, name="models")
app.add_typer(updates.app, name="updates")
app.add_typer(results.app, name="results")
app.add_typer(rollouts.app, name="rollouts")
app.add_typer(claims.app, name="claims")
app.add_typer(drift.app, name="drift")
app.command("login")(login.login)
app.command("simulate")(simulate.simulate)

agent = typer.Typer(help="The device agent.", no_args_is_help=True)


@agent.command("run", context_settings={"ignore_unknown_options": True})
def agent_run() -> None:
    """Run the device agent (handled before this app loads; see `edgefleet agent run --help`)."""


agent.command("status")(agent_status.status)

app.add_typer(agent, name="agent")
