"""``edgefleet sites create | list`` and ``edgefleet profiles apply | list``."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from edgefleet.cli.common import controller, handled
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
    """Store a profile file as the profile's next revision (unchanged content: none)."""
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EdgefleetError(f"cannot read {file}: {exc}", code="bad_file") from exc
    if not isinstance(doc, dict) or "name" not in doc:
        raise EdgefleetError(f"{file} must be a mapping with a 'name'", code="bad_file")
    name = doc.pop("name")
    result = controller(ctx).post("/profiles", {"name": name, "spec": doc})
    show(result, output, ["name", "revision", "created_revision"])


@profiles.command("list")
@handled
def list_profiles(ctx: typer.Context, output: Format = OutputOpt) -> None:
    show(controller(ctx).get("/profiles"), output, ["name", "revision"])
