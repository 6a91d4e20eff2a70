"""``edgefleet sites create | list`` and ``edgefleet profiles apply | list | show | diff``."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from edgefleet import profilespec
from edgefleet.cli.common import controller, handled
from edgefleet.cli.gitops import gitops_note
from edgefleet.cli.output import Format, OutputOpt, show
from edgefleet.errors import EdgefleetError
from edgefleet.labels import parse_labels

app = typer.Typer(help="Sites: where devices live.", no_args_is_help=True)
profiles = typer.Typer(help="Cluster profiles (numbered revisions).", no_args_is_help=True)


@app.command()
@handled
def create(
    ctx: typer.Context,
    name: str,
    timezone: str = typer.Option("UTC", help="IANA time zone, e.g. Europe/Berlin"),
    label: list[str] = typer.Option([], help="key=value (repeat)"),
    output: Format = OutputOpt,
) -> None:
    body = {"name": name, "timezone": timezone, "labels": parse_labels(label)}
    show(controller(ctx).post("/sites", body), output, ["name", "timezone", "labels"])


@app.command("list")
@handled
def list_(ctx: typer.Context, output: Format = OutputOpt) -> None:
    show(controller(ctx).get("/sites"), output, ["name", "timezone", "labels"])


@profiles.command()
@handled
def apply(ctx: typer.Context, file: Path, output: Format = OutputOpt) -> None:
    """Store a profile file as the profile's next revision (unchanged content: none).

    The file is checked against the profile schema here first; the controller checks again.
    """
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EdgefleetError(f"cannot read {file}: {exc}", code="bad_file") from exc
    problems = profilespec.errors(doc)
    if problems:
        raise EdgefleetError(
            f"{file} is not a valid profile: {profilespec.describe(problems)}",
            code="invalid_profile",
        )
    name = doc.pop("name")
    result = controller(ctx).post("/profiles", {"name": name, "spec": doc})
    show(result, output, ["name", "revision", "created_revision"])
    gitops_note(result, output)


@profiles.command("list")
@handled
def list_profiles(ctx: typer.Context, output: Format = OutputOpt) -> None:
    show(controller(ctx).get("/profiles"), output, ["name", "revision"])


@profiles.command("show")
@handled
def show_profile(
    ctx: typer.Context,
    name: str,
    revision: int | None = typer.Option(None, "--revision", "-r", help="default: the latest"),
    output: Format = OutputOpt,
) -> None:
    """Print one revision of a profile as its canonical YAML (or JSON with -o json)."""
    result = controller(ctx).get(f"/profiles/{name}", revision=revision)
    if output == Format.json:
        show(result, output, [])
        return
    typer.echo(
        f"# {result['name']} revision {result['revision']} ({result['digest']}), "
        f"{result['created_at']} by {result['created_by'] or '-'}"
    )
    typer.echo(profilespec.canonical_yaml({"name": result["name"], **result["spec"]}), nl=False)


@profiles.command("diff")
@handled
def diff(ctx: typer.Context, name: str, a: int, b: int, output: Format = OutputOpt) -> None:
    """A unified diff of revisions A and B of a profile (their canonical YAML)."""
    result = controller(ctx).get(f"/profiles/{name}/diff", a=a, b=b)
    if output == Format.json:
        show(result, output, [])
    elif result["diff"]:
        typer.echo(result["diff"], nl=False)
    else:
        typer.echo(f"# revisions {a} and {b} have the same content")
