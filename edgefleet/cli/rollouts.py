"""``edgefleet rollouts plan | create | list | status | devices | pause | resume | abort |
rollback``.

``plan`` is the dry run, changing nothing; it ends with its seed, the rollout key that
ranked the devices into waves. ``create`` takes the same options, shows that plan and
asks, then creates the rollout from the plan's own spec (seed included): the rollout
runs exactly the waves that were shown. The controller's engine drives it from there;
``status --watch`` follows it to its end.
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from edgefleet.cli.client import Controller
from edgefleet.cli.common import controller, err, handled
from edgefleet.cli.output import Format, OutputOpt, console, show
from edgefleet.cli.rollout_view import (
    LIST_COLUMNS,
    TERMINAL,
    list_row,
    render_plan,
    status_view,
)
from edgefleet.errors import ApiError, EdgefleetError
from edgefleet.labels import parse_labels

app = typer.Typer(help="Wave rollouts of a profile revision.", no_args_is_help=True)

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(?:\d+[smhd])+")
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C


class OnFailure(StrEnum):
    pause = "pause"
    rollback = "rollback"


class Offline(StrEnum):
    wait = "wait"
    skip = "skip"
    fail = "fail"


class State(StrEnum):
    running = "running"
    paused = "paused"
    completed = "completed"
    aborted = "aborted"
    rolled_back = "rolled_back"


def seconds(text: str, option: str = "") -> int:
    """90 (seconds), 30s, 10m, 1h30m, 2d."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    if not DURATION.fullmatch(value):
        raise typer.BadParameter(
            f"{text!r} is not a duration like 90s, 10m, 1h30m or 2d", param_hint=option or None
        )
    return sum(int(n) * UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", value))


def rollout_spec(
    profile: str = typer.Option(..., help="Profile whose devices to update"),
    revision: int | None = typer.Option(None, help="Revision to roll out; default: the latest"),
    label: list[str] = typer.Option([], help="Only devices with key=value (repeat; all match)"),
    site: list[str] = typer.Option([], help="Only devices at this site (repeat)"),
    waves: str = typer.Option("1,10%,100%", help="Cumulative steps: 1,5%,25%,100%"),
    bake: str = typer.Option("10m", help="Bake time per wave before its gates are read"),
    concurrency: int | None = typer.Option(None, min=1, help="Devices updating at once"),
    on_failure: OnFailure = typer.Option(OnFailure.rollback, help="When a gate fails"),
    offline: Offline = typer.Option(Offline.wait, help="Devices offline when their wave starts"),
    offline_deadline: str = typer.Option("1h", help="How long to wait for offline devices"),
    min_success: float = typer.Option(1.0, help="Gate: share of a wave's updates that commit"),
    max_failures: int = typer.Option(0, help="Gate: failed updates tolerated in all"),
    max_p95_ms: float | None = typer.Option(None, help="Gate: inference p95 at most (ms)"),
    max_error_rate: float | None = typer.Option(None, help="Gate: inference error share"),
    shadow: str = typer.Option(
        "0",
        help="Shadow phase per wave before its devices are moved (e.g. 30m; 0: none): they "
        "run the changed models beside the active ones and report agreement",
    ),
    shadow_sample_rate: float = typer.Option(1.0, help="Share of inferences run in shadow"),
    shadow_window: str = typer.Option("60s", help="Agreement window during the shadow phase"),
    min_agreement: float | None = typer.Option(
        None, help="Shadow gate: top-1 agreement with the active model, at least (0-1)"
    ),
    max_mad: float | None = typer.Option(
        None, help="Shadow gate: mean absolute difference of the outputs, at most"
    ),
    max_drift: float | None = typer.Option(
        None, help="Shadow gate: worst input PSI during the shadow phase, at most"
    ),
    min_shadow_samples: int = typer.Option(
        100, help="Shadow gate: compared inferences each changed model needs"
    ),
    ignore_windows: bool = typer.Option(
        False, "--ignore-windows", help="Update sites outside their maintenance windows too"
    ),
    seed: str | None = typer.Option(None, help="Rollout key ranking devices into waves"),
) -> dict[str, Any]:
    """The RolloutSpec the options ask for; its parameters are the options themselves."""
    return {
        "profile": profile,
        "revision": revision,
        "labels": parse_labels(label),
        "sites": site,
        "waves": waves,
        "bake_seconds": seconds(bake, "--bake"),
        "gates": {
            "min_success_ratio": min_success,
            "max_failures": max_failures,
            "max_p95_ms": max_p95_ms,
            "max_error_rate": max_error_rate,
            "min_agreement": min_agreement,
            "max_mad": max_mad,
            "max_drift": max_drift,
            "min_shadow_samples": min_shadow_samples,
        },
        "shadow_seconds": seconds(shadow, "--shadow"),
        "shadow_sample_rate": shadow_sample_rate,
        "shadow_window_seconds": seconds(shadow_window, "--shadow-window"),
        "on_failure": on_failure.value,
        "offline": offline.value,
        "offline_deadline_seconds": seconds(offline_deadline, "--offline-deadline"),
        "concurrency": concurrency,
        "respect_windows": not ignore_windows,
        "seed": seed,
    }


def with_spec(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the options of ``rollout_spec`` (after its context) and call it
    with the ``spec`` they make: ``plan`` and ``create`` are defined by one option list."""
    options = inspect.signature(rollout_spec, eval_str=True).parameters
    own = inspect.signature(command, eval_str=True)
    ctx, *rest = (p for p in own.parameters.values() if p.name != "spec")

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        spec = rollout_spec(**{name: kwargs.pop(name) for name in options})
        command(spec=spec, **kwargs)

    wrapper.__signature__ = own.replace(  # type: ignore[attr-defined]
        parameters=[ctx, *options.values(), *rest]
    )
    return wrapper


@app.command("plan")
@handled
@with_spec
def plan(ctx: typer.Context, spec: dict[str, Any], output: Format = OutputOpt) -> None:
    """Show the waves a rollout would make now, and how long it may take (changes nothing)."""
    result = controller(ctx).post("/rollouts/plan", spec)
    if output == Format.json:
        show(result, output, [])
        return
    render_plan(result, console)


@app.command("create")
@handled
@with_spec
def create(
    ctx: typer.Context,
    spec: dict[str, Any],
    update_timeout: str = typer.Option(
        "30m", help="An online device that reports no outcome in this long has failed"
    ),
    reason: str = typer.Option("", help="Why, for the rollout's events and the audit log"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Create it without showing the plan"),
    output: Format = OutputOpt,
) -> None:
    """Start a rollout: shows its plan and asks first, unless --yes.

    The rollout gets the plan's seed, hence exactly the waves shown.
    """
    spec = {**spec, "update_timeout_seconds": seconds(update_timeout, "--update-timeout")}
    ctl = controller(ctx)
    if not yes:
        as_json = output == Format.json  # the plan and the question then go to stderr
        planned = ctl.post("/rollouts/plan", spec)
        render_plan(planned, err if as_json else console)
        if not typer.confirm("Create this rollout?", err=as_json):
            err.print("nothing created")
            raise typer.Exit(1)
        spec = planned["spec"]
    rollout = ctl.post("/rollouts", {**spec, "reason": reason})
    if output == Format.json:
        show(rollout, output, [])
        return
    console.print(
        f"rollout {rollout['id']} created: profile {escape(rollout['profile'])} revision "
        f"{rollout['from_revision']} -> {rollout['revision']}, {rollout['devices']} devices "
        f"in {rollout['waves_total']} waves (seed {escape(rollout['spec']['seed'])})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"watch it: edgefleet rollouts status {rollout['id']} --watch", highlight=False)


@app.command("list")
@handled
def list_(
    ctx: typer.Context,
    state: State | None = typer.Option(None, help="Only rollouts in this state"),
    limit: int = typer.Option(50, min=1, max=1000, help="How many, newest first"),
    output: Format = OutputOpt,
) -> None:
    """Rollouts, newest first: where each stands and how its devices fared."""
    rows = controller(ctx).get("/rollouts", state=state.value if state else None, limit=limit)
    if output == Format.table:
        now = datetime.now(UTC)
        rows = [list_row(r, now) for r in rows]
    show(rows, output, LIST_COLUMNS)


class Outcome(StrEnum):
    pending = "pending"
    updating = "updating"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    reverted = "reverted"


@app.command("devices")
@handled
def devices(
    ctx: typer.Context,
    rollout_id: int = typer.Argument(..., metavar="ID"),
    wave: int | None = typer.Option(None, min=1, help="Only this wave's devices"),
    state: Outcome | None = typer.Option(None, help="Only devices with this outcome"),
    limit: int = typer.Option(1000, min=1, max=100_000, help="How many at most"),
    output: Format = OutputOpt,
) -> None:
    """A rollout's devices: their wave, how their update went and why."""
    rows = controller(ctx).get(
        f"/rollouts/{rollout_id}/devices",
        wave=wave,
        state=state.value if state else None,
        limit=limit,
    )
    show(rows, output, ["device", "wave", "state", "reason", "moved_at", "resolved_at"])


@app.command("status")
@handled
def status(
    ctx: typer.Context,
    rollout_id: int = typer.Argument(..., metavar="ID"),
    watch: bool = typer.Option(
        False, "--watch", "-w", help="Redraw until the rollout ends; exit 1 unless completed"
    ),
    interval: float = typer.Option(2.0, min=0.1, help="Seconds between polls with --watch"),
    output: Format = OutputOpt,
) -> None:
    """A rollout wave by wave, its state and reason, and its latest events."""
    ctl = controller(ctx)
    path = f"/rollouts/{rollout_id}"
    if not watch:
        rollout = ctl.get(path)
        if output == Format.json:
            show(rollout, output, [])
        else:
            console.print(status_view(rollout, datetime.now(UTC)))
        return
    try:
        rollout = (
            _wait(ctl, path, interval) if output == Format.json else _live(ctl, path, interval)
        )
    except KeyboardInterrupt:  # Ctrl-C: the way to stop watching
        err.print(f"stopped watching; rollout {rollout_id} goes on")
        raise typer.Exit(INTERRUPTED) from None
    if output == Format.json:
        show(rollout, output, [])
    _ended(rollout, err if output == Format.json else console)


@app.command("show")
@handled
def show_rollout(
    ctx: typer.Context,
    rollout_id: int = typer.Argument(..., metavar="ID"),
    output: Format = OutputOpt,
) -> None:
    """A rollout once: its waves, the evidence of their shadow phases, its latest events."""
    rollout = controller(ctx).get(f"/rollouts/{rollout_id}")
    if output == Format.json:
        show(rollout, output, [])
    else:
        console.print(status_view(rollout, datetime.now(UTC)))


def _poll(ctl: Controller, path: str, last: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The rollout now, or the last one seen and why not: a watch outlives a controller
    restarting or busy a moment (any other error ends it)."""
    try:
        return ctl.get(path), ""
    except EdgefleetError as exc:
        passing = exc.code == "unreachable" or (
            isinstance(exc, ApiError) and (exc.status == 429 or exc.status >= 500)
        )
        if not passing:
            raise
        return last, f"{exc.message}; trying again"


def _wait(ctl: Controller, path: str, interval: float) -> dict[str, Any]:
    rollout = ctl.get(path)
    while rollout["state"] not in TERMINAL:
        time.sleep(interval)
        rollout, _ = _poll(ctl, path, rollout)
    return rollout


def _live(ctl: Controller, path: str, interval: float) -> dict[str, Any]:
    """Redraw the status in place; into a pipe or a file, print only the final one."""
    if not console.is_terminal:
        rollout = _wait(ctl, path, interval)
        console.print(status_view(rollout, datetime.now(UTC)))
        return rollout
    rollout = ctl.get(path)
    with Live(status_view(rollout, datetime.now(UTC)), console=console, auto_refresh=False) as live:
        while rollout["state"] not in TERMINAL:
            time.sleep(interval)
            rollout, note = _poll(ctl, path, rollout)
            live.update(status_view(rollout, datetime.now(UTC), note), refresh=True)
    return rollout


def _ended(rollout: dict[str, Any], out: Console) -> None:
    """Exit 0 for a completed rollout, 1 (saying so) for one that ended otherwise."""
    if rollout["state"] == "completed":
        out.print(f"rollout {rollout['id']} completed", highlight=False)
        return
    why = f": {escape(rollout['reason'])}" if rollout["reason"] else ""
    err.print(f"rollout {rollout['id']} ended {rollout['state']}{why}", highlight=False)
    raise typer.Exit(1)


def _action(verb: str, doc: str) -> None:
    @handled
    def command(
        ctx: typer.Context,
        rollout_id: int = typer.Argument(..., metavar="ID"),
        reason: str = typer.Option("", help="Why, for the rollout's events and the audit log"),
        output: Format = OutputOpt,
    ) -> None:
        rollout = controller(ctx).post(f"/rollouts/{rollout_id}/{verb}", {"reason": reason})
        if output == Format.json:
            show(rollout, output, [])
            return
        why = f": {escape(rollout['reason'])}" if rollout["reason"] else ""
        console.print(f"rollout {rollout['id']} is {rollout['state']}{why}", highlight=False)

    command.__doc__ = doc
    app.command(verb)(command)


_action("pause", "Stop starting waves and moving devices; those moved keep the target.")
_action("resume", "Go on with a paused rollout from where it stopped.")
_action("abort", "Stop for good; devices already moved keep the target (see rollback).")
_action("rollback", "Put every device the rollout moved back on the revision it had.")
