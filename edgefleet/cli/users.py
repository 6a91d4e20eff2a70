"""``edgefleet users create | list | disable | passwd``."""

from __future__ import annotations

import sys

import typer

from edgefleet.cli.common import controller, handled
from edgefleet.cli.output import Format, OutputOpt, show

app = typer.Typer(help="Operators and their roles.", no_args_is_help=True)
COLUMNS = ["username", "role", "site", "disabled", "password"]


@app.command()
@handled
def create(
    ctx: typer.Context,
    username: str,
    role: str = typer.Option(..., help="admin, operator, viewer or installer"),
    site: str | None = typer.Option(None, help="The installer's site"),
    output: Format = OutputOpt,
) -> None:
    """Create a user; their API token is shown once."""
    created = controller(ctx).post("/users", {"username": username, "role": role, "site": site})
    show(created, output, COLUMNS)
    if output == Format.table:
        typer.echo(f"API token (shown once): {created['api_token']}")


@app.command("list")
@handled
def list_(ctx: typer.Context, output: Format = OutputOpt) -> None:
    show(controller(ctx).get("/users"), output, COLUMNS)


@app.command()
@handled
def disable(ctx: typer.Context, username: str, output: Format = OutputOpt) -> None:
    """Disable a user: their API tokens stop working at once."""
    show(controller(ctx).post(f"/users/{username}/disable"), output, COLUMNS)


@app.command()
@handled
def passwd(
    ctx: typer.Context,
    username: str,
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the new password from standard input"
    ),
    output: Format = OutputOpt,
) -> None:
    """Set a user's console password (admins: anyone's); their console sessions end."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    show(
        controller(ctx).post(f"/users/{username}/password", {"password": password}),
        output,
        COLUMNS,
    )
