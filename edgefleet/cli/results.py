"""``edgefleet results tail``: the newest inference results, then (``--follow``) new ones
as they arrive.

The tail is ordered by the result's time (the device's clock, corrected by the
controller where it knows the boot); following goes by order of arrival, after the
last result seen, so a device's backlog uploaded late still shows up. Payloads come from
devices: they are printed as text, never read as Rich markup.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from rich.markup import escape
from rich.text import Text

from edgefleet.cli.client import Controller
from edgefleet.cli.common import controller, err, handled
from edgefleet.cli.output import console
from edgefleet.errors import ApiError, EdgefleetError

app = typer.Typer(help="Inference results the devices uploaded.", no_args_is_help=True)

PAGE = 1000  # the most the controller answers at once
PAYLOAD_CHARS = 120  # a payload's width when not printing to a terminal
MAX_BACKOFF = 30.0
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
RELATIVE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")

Emit = Callable[[dict[str, Any]], None]
Warn = Callable[[str], None]


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """An ISO time (UTC unless it names an offset) or a duration ago: 30s, 10m, 2h, 1d, 1h30m."""
    value = text.strip()
    if RELATIVE.fullmatch(value):
        seconds = sum(
            float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", value)
        )
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an ISO time (2026-11-24T10:00:00Z) nor a duration ago "
            "(30s, 10m, 2h, 1d)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _when_option(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_when(value)
    except typer.BadParameter as exc:
        exc.param_hint = name
        raise


def _stamp(iso: str) -> str:
    when = datetime.fromisoformat(iso).astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _digest(digest: str) -> str:
    return (digest.split(":", 1)[-1][:12]) or "-"


def _payload(row: dict[str, Any]) -> str:
    if row["encoding"] == "base64":
        text = row["payload"]
        return f"<base64, {len(text) * 3 // 4 - text.count('=')} bytes> {text}"
    return json.dumps(row["payload"], separators=(",", ":"), ensure_ascii=False)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _prefix(row: dict[str, Any]) -> Text:
    slot = row.get("slot") or "-"
    revision = "-" if row.get("revision") is None else f"r{row['revision']}"
    mark = " " if row.get("corrected") else "~"
    return Text.assemble(
        (mark + _stamp(row["time"]), "dim"),
        "  ",
        (row["device"], "cyan"),
        f"  #{row['seq']:<6} ",
        (_digest(row.get("digest") or ""), "magenta"),
        f"  {slot}/{revision}  ",
    )


def line(row: dict[str, Any], width: int | None = None) -> Text:
    """One result: time (``~`` where it is the device's own clock, uncorrected), device,
    sequence, model digest, slot/revision, then the payload as compact JSON, cut to fit
    ``width`` (the line's; at least 40 characters of payload) or ``PAYLOAD_CHARS``."""
    prefix = _prefix(row)
    room = PAYLOAD_CHARS if width is None else max(width - prefix.cell_len, 40)
    return prefix.append(_clip(_payload(row), room))


def printer(as_json: bool) -> Emit:
    """Print each result as a JSON line, or as one line for people."""
    if as_json:
        return lambda row: typer.echo(json.dumps(row, ensure_ascii=False))

    def emit(row: dict[str, Any]) -> None:
        width = console.width if console.is_terminal else None
        console.print(line(row, width), soft_wrap=True, highlight=False)

    return emit


def _transient(exc: EdgefleetError) -> bool:
    """Worth waiting out: the controller unreachable, restarting, busy or rate limiting."""
    if isinstance(exc, ApiError):
        return exc.status == 429 or exc.status >= 500
    return exc.code == "unreachable"


def follow(
    ctl: Controller,
    query: dict[str, Any],
    *,
    after: int | None,
    emit: Emit,
    stop: threading.Event,
    interval: float,
    warn: Warn,
    skip: Collection[int] = (),
) -> None:
    """Emit results in order of arrival, after id ``after``, until ``stop`` is set.

    Polls every ``interval`` seconds (at once while pages come back full). A controller
    that cannot be reached, or answers 429/5xx, is waited out with a message and a
    growing pause; any other error ends the loop. ``skip``: ids already printed.
    """
    failures = 0
    while not stop.is_set():
        try:
            page = ctl.get("/results", **query, order="arrival", after=after, limit=PAGE)
        except EdgefleetError as exc:
            if not _transient(exc):
                raise
            failures += 1
            pause = min(interval * 2 ** (failures - 1), MAX_BACKOFF)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after:
                pause = max(pause, float(retry_after))
            warn(f"{exc.message}; retrying in {pause:g}s")
            stop.wait(pause)
            continue
        if failures:
            warn("the controller answers again; following")
            failures = 0
        rows = page["results"]
        for row in rows:
            if row["id"] not in skip:
                emit(row)
        if rows:
            after = rows[-1]["id"]
        if len(rows) < PAGE:
            stop.wait(interval)


def _newest_arrival(ctl: Controller, query: dict[str, Any]) -> int | None:
    """The id of the last result to arrive so far: following starts after it."""
    rows = ctl.get("/results", **query, order="arrival", newest="true", limit=1)["results"]
    return rows[-1]["id"] if rows else None


@app.command("tail")
@handled
def tail(
    ctx: typer.Context,
    device: str | None = typer.Option(None, help="Only this device's results"),
    since: str | None = typer.Option(
        None, help="From this time: ISO (UTC unless it has an offset) or ago: 10m, 2h, 1d"
    ),
    until: str | None = typer.Option(None, help="Before this time, as --since"),
    lines: int = typer.Option(
        20, "--lines", "-n", min=0, max=PAGE, help="How many of the newest results to show"
    ),
    follow_: bool = typer.Option(
        False, "--follow", "-f", help="Then print new results as they arrive, until Ctrl-C"
    ),
    interval: float = typer.Option(2.0, min=0.1, help="Seconds between polls with --follow"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line"),
) -> None:
    """The newest results (by time, oldest first); --follow keeps printing new ones.

    A time marked ~ is the device's own clock: the controller could not correct it.
    """
    start, end = _when_option(since, "--since"), _when_option(until, "--until")
    if start is not None and end is not None and end <= start:
        raise typer.BadParameter("--until must be after --since", param_hint="--until")
    query = {
        "device": device,
        "since": start.isoformat() if start else None,
        "until": end.isoformat() if end else None,
    }
    ctl = controller(ctx)
    # Where following will start is taken first: what arrives meanwhile is not missed.
    after = _newest_arrival(ctl, query) if follow_ else None
    emit = printer(as_json)
    shown: list[int] = []
    if lines:
        rows = ctl.get("/results", **query, order="time", newest="true", limit=lines)["results"]
        for row in rows:
            emit(row)
        shown = [row["id"] for row in rows]
        if not rows and not as_json and not follow_:
            err.print("no results" + (" in that range" if start or end else ""))
    if not follow_:
        return
    if not as_json:
        err.print("[dim]following new results; Ctrl-C stops[/dim]")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the way to stop following
        follow(
            ctl,
            query,
            after=after,
            emit=emit,
            stop=threading.Event(),
            interval=interval,
            warn=lambda message: err.print(
                f"[yellow]warning[/yellow]: {escape(message)}", highlight=False
            ),
            skip=set(shown),
        )
