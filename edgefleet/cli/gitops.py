"""``edgefleet gitops log``: the fleet repository's history, read from the local root."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.cli.controller import ConfigOpt, DataDirOpt, controller_settings
from edgefleet.cli.output import Format, OutputOpt, show

app = typer.Typer(help="The fleet repository (GitOps) the controller writes.", no_args_is_help=True)
COLUMNS = ["repository", "commit", "date", "author", "subject"]


@app.command()
def log(
    site: str | None = typer.Option(None, help="Only this site's repository"),
    n: int = typer.Option(20, "-n", min=1, help="How many commits per repository"),
    root: Path | None = typer.Option(
        None, help="Repository root [env EDGEFLEET_GITOPS_ROOT; default <data dir>/gitops]"
    ),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    output: Format = OutputOpt,
) -> None:
    """Show the newest commits: what changed, why, and who asked for it."""
    from edgefleet.controller.gitops.model import GitopsParams, repository_root
    from edgefleet.controller.gitops.render import FLEET, repository_name
    from edgefleet.controller.gitops.repository import Repository, RepositoryError

    settings = controller_settings(config=config, data_dir=data_dir)
    folder = root or repository_root(settings)
    if not folder.is_dir():
        typer.echo(f"error: no fleet repositories under {folder} (set --root)", err=True)
        raise typer.Exit(1)
    if site is not None:
        name = repository_name(site, GitopsParams.from_settings(settings))
        if not (folder / f"{name}.git").is_dir():
            name = FLEET  # the whole fleet in one repository
        names = [name]
    else:
        names = sorted(p.name.removesuffix(".git") for p in folder.glob("*.git"))
    rows = []
    for name in names:
        path = folder / f"{name}.git"
        if not path.is_dir():
            typer.echo(f"error: no repository for site {site!r} under {folder}", err=True)
            raise typer.Exit(1)
        try:
            entries = Repository(path).log(n)
        except RepositoryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        rows += [{"repository": name, **entry} for entry in entries]
    if output == Format.table:
        rows = [{**row, "commit": row["commit"][:12]} for row in rows]
    show(rows, output, COLUMNS)
