"""``edgefleet gitops status | log | restore``: the fleet repositories the controller writes."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cli.common import controller, handled
from edgefleet.cli.output import Format, OutputOpt, console, show

app = typer.Typer(
    help="The fleet repositories (GitOps) the controller writes.", no_args_is_help=True
)
LOG_COLUMNS = ["commit", "date", "author", "subject"]


def gitops_note(result: dict[str, Any], output: Format) -> None:
    """After a change of intent: which commit carries it, or why it is not written yet."""
    outcome = result.get("gitops")
    if output != Format.table or not outcome:
        return
    if "pending" in outcome:
        console.print(f"fleet repository: not written yet ({outcome['pending']})")
        return
    for repo, commit in sorted(outcome["commits"].items()):
        if commit:
            console.print(f"fleet repository {repo}: commit {commit[:12]}")
        elif outcome["heads"].get(repo):
            console.print(f"fleet repository {repo}: unchanged at {outcome['heads'][repo][:12]}")


@app.command()
@handled
def status(ctx: typer.Context, output: Format = OutputOpt) -> None:
    """The writer's health (last success, last error) and every repository's head."""
    result = controller(ctx).get("/gitops")
    if output == Format.json:
        show(result, output, [])
        return
    heads = result.pop("repository_heads")
    result.pop("last_commits", None)
    show([{"": k, "value": v} for k, v in result.items()], output, ["", "value"])
    rows = [{"repository": name, "head": (h or "-")[:12]} for name, h in heads.items()]
    show(rows, output, ["repository", "head"])


@app.command()
@handled
def log(
    ctx: typer.Context,
    repository: str = typer.Argument(..., help="A site's name, or 'fleet' for one repository"),
    n: int = typer.Option(20, "-n", min=1, max=1000, help="How many commits"),
    output: Format = OutputOpt,
) -> None:
    """The newest commits: what changed, why, and who asked for it."""
    rows = controller(ctx).get(f"/gitops/{repository}/log", n=n)
    if output == Format.table:
        rows = [{**row, "commit": row["commit"][:12]} for row in rows]
    show(rows, output, LOG_COLUMNS)


@app.command()
@handled
def restore(
    ctx: typer.Context,
    repository: str = typer.Argument(..., help="A site's name, or 'fleet'"),
    commit: str = typer.Argument(..., help="The commit whose assignments to bring back"),
    reason: str = typer.Option("", help="Why, for the commit message and the audit log"),
    output: Format = OutputOpt,
) -> None:
    """Give the devices of an earlier commit the profile revisions it shows (pinned), as a
    new commit that says what it reverts."""
    body = {"commit": commit, "reason": reason}
    result = controller(ctx).post(f"/gitops/{repository}/restore", body)
    if output == Format.json:
        show(result, output, [])
        return
    console.print(f"restored {result['restored'][:12]}: {result['subject']}")
    console.print(f"devices changed: {len(result['devices'])}")
    for device_id, why in sorted(result["skipped"].items()):
        console.print(f"skipped {device_id}: {why}")
    gitops_note(result, output)
