"""``edgefleet sites create | list | windows`` and ``edgefleet profiles apply | release | list |
show | diff``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgefleet import profilespec, safeyaml
from edgefleet.cli.common import controller, handled
from edgefleet.cli.gitops import gitops_note
from edgefleet.cli.output import Format, OutputOpt, show
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.labels import parse_labels

app = typer.Typer(help="Sites: where devices live.", no_args_is_help=True)
profiles = typer.Typer(help="Cluster profiles (numbered revisions).", no_args_is_help=True)
COLUMNS = ["name", "timezone", "labels", "windows"]
WINDOW_HELP = "Maintenance window in the site's time zone, e.g. 'Mon-Fri 01:00-05:00' (repeat)"


def _show_sites(rows: list[dict[str, Any]] | dict[str, Any], output: Format) -> None:
    """Windows are joined with '; ' in tables: a window may hold commas (Sat,Sun ...)."""
    if output == Format.table:
        items = rows if isinstance(rows, list) else [rows]
        rows = [
            {**r, "windows": "; ".join(r.get("maintenance_windows") or []) or "any time"}
            for r in items
        ]
    show(rows, output, COLUMNS)


@app.command()
@handled
def create(
    ctx: typer.Context,
    name: str,
    timezone: str = typer.Option("UTC", help="IANA time zone, e.g. Europe/Berlin"),
    label: list[str] = typer.Option([], help="key=value (repeat)"),
    window: list[str] = typer.Option([], help=WINDOW_HELP),
    output: Format = OutputOpt,
) -> None:
    """Create a site; without --window, rollouts may update its devices at any time."""
    body = {
        "name": name,
        "timezone": timezone,
        "labels": parse_labels(label),
        "maintenance_windows": window,
    }
    _show_sites(controller(ctx).post("/sites", body), output)


@app.command("list")
@handled
def list_(ctx: typer.Context, output: Format = OutputOpt) -> None:
    _show_sites(controller(ctx).get("/sites"), output)


@app.command("windows")
@handled
def windows(
    ctx: typer.Context,
    name: str,
    window: list[str] = typer.Option([], help=WINDOW_HELP),
    clear: bool = typer.Option(False, "--clear", help="Remove every window: any time"),
    output: Format = OutputOpt,
) -> None:
    """Replace a site's maintenance windows (--window, repeated), or --clear them."""
    if bool(window) == clear:
        raise EdgefleetError(
            "give the new windows with --window (repeat), or --clear to allow any time",
            code="usage",
        )
    path = f"/sites/{name}/maintenance-windows"
    _show_sites(controller(ctx).request("PUT", path, json={"windows": window}), output)


@profiles.command()
@handled
def apply(
    ctx: typer.Context,
    file: Path,
    hold: bool = typer.Option(
        False, "--hold", help="Followers keep their revision: a rollout brings them this one"
    ),
    output: Format = OutputOpt,
) -> None:
    """Store a profile file as the profile's next revision (unchanged content: none).

    The file is checked against the profile schema here first; the controller checks again.
    Without --hold, every device that follows the profile gets the new revision at once.
    """
    try:
        doc = safeyaml.load(file.read_text(), "the profile")
    except OSError as exc:
        raise EdgefleetError(f"cannot read {file}: {exc}", code="bad_file") from exc
    except ConfigError as exc:
        raise EdgefleetError(f"cannot read {file}: {exc.message}", code="bad_file") from exc
    problems = profilespec.errors(doc)
    if problems:
        raise EdgefleetError(
            f"{file} is not a valid profile: {profilespec.describe(problems)}",
            code="invalid_profile",
        )
    body = {"name": doc.pop("name"), "spec": doc}
    if hold:  # only then: a controller without rollouts still takes the plain apply
        body["hold"] = True
    result = controller(ctx).post("/profiles", body)
    show(result, output, ["name", "revision", "created_revision", "released_revision"])
    gitops_note(result, output)


@profiles.command("release")
@handled
def release(
    ctx: typer.Context,
    name: str,
    revision: int | None = typer.Option(None, min=1, help="Give the followers this revision"),
    latest: bool = typer.Option(False, "--latest", help="Followers track the latest again"),
    reason: str = typer.Option("", help="Why, for the audit log"),
    output: Format = OutputOpt,
) -> None:
    """Give the devices that follow a profile a revision now, without a rollout.

    Refused while a rollout of the profile runs: it moves the followers itself.
    """
    if (revision is None) != latest:
        raise EdgefleetError("give one of --revision N and --latest", code="usage")
    body = {"revision": revision, "reason": reason}
    result = controller(ctx).post(f"/profiles/{name}/release", body)
    show(result, output, ["name", "revision", "released_revision"])
    gitops_note(result, output)


@profiles.command("list")
@handled
def list_profiles(ctx: typer.Context, output: Format = OutputOpt) -> None:
    """Profiles, their latest revision and the one followers get (- : the latest)."""
    show(controller(ctx).get("/profiles"), output, ["name", "revision", "released_revision"])


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
    released = result.get("released_revision")
    typer.echo(
        f"# {result['name']} revision {result['revision']} ({result['digest']}), "
        f"{result['created_at']} by {result['created_by'] or '-'}"
        + (f"; followers get revision {released}" if released is not None else "")
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
