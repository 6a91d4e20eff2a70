"""How rollouts look in a terminal: the plan's waves, the list's rows and the status
(wave by wave, then the latest events), drawn once or redrawn live by ``--watch``.

Names, reasons and details come from operators and devices: they are printed as text,
never read as Rich markup.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edgefleet.readable import duration

TERMINAL = ("completed", "aborted", "rolled_back")
"""A rollout in one of these states changes no more."""
MAX_SITES_SHOWN = 4
EVENTS_SHOWN = 6
BAR = 10
STATE_STYLE = {
    "running": "yellow",
    "paused": "magenta",
    "completed": "green",
    "aborted": "red",
    "rolled_back": "red",
    "updating": "yellow",
    "baking": "cyan",
    "shadowing": "blue",
    "passed": "green",
    "failed": "red",
    "pending": "dim",
}
OUTCOMES = (  # in the order the bar draws them: the word shown, the bar's mark and colour
    ("succeeded", "ok", "█", "green"),
    ("failed", "failed", "█", "red"),
    ("reverted", "reverted", "█", "magenta"),
    ("skipped", "skipped", "▒", "blue"),
    ("updating", "updating", "▒", "yellow"),
    ("pending", "pending", "░", "dim"),
)


def when(iso: str) -> datetime:
    """A controller time, as an aware UTC datetime (UTC where it names no offset)."""
    at = datetime.fromisoformat(iso)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def ago(iso: str | None, now: datetime) -> str:
    return "-" if iso is None else f"{duration((now - when(iso)).total_seconds())} ago"


def state(name: str) -> Text:
    return Text(name, style=STATE_STYLE.get(name, ""))


def sites(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_SITES_SHOWN])
    more = len(names) - MAX_SITES_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "") if names else "-"


# -- the plan -------------------------------------------------------------------------


def render_plan(plan: dict[str, Any], out: Console) -> None:
    """The waves as a table, then the totals, the seed and any warnings."""
    table = Table("wave", "step", "devices", "offline", "sites", "closed now / opens at")
    for wave in plan["waves"]:
        table.add_row(
            str(wave["wave"]),
            escape(wave["step"]),
            str(wave["devices"]),
            f"[yellow]{wave['offline']}[/yellow]" if wave["offline"] else "0",
            escape(sites(wave["sites"])),
            escape(_closed(wave)),
        )
    out.print(table)
    if plan.get("shadow"):
        out.print(_shadow_plan(plan["shadow"]), highlight=False, soft_wrap=True)
    following = plan["following"]
    now = (
        f"revision {next(iter(following))}"
        if len(following) == 1
        else "revisions " + ", ".join(f"{rev} ({n} devices)" for rev, n in following.items())
    )
    lines = [
        f"profile {escape(plan['profile'])}: roll out revision {plan['revision']} "
        f"(latest {plan['latest_revision']}); the devices follow {now} now",
        f"{plan['devices']} devices at {plan['sites']} site(s), {plan['offline']} offline; "
        f"expected duration {duration(plan['expected_seconds'])}" + _offline_wait(plan),
        f"seed {escape(plan['seed'])}: the same options with --seed {escape(plan['seed'])} "
        "give these waves",
        *(f"[yellow]warning[/yellow]: {escape(w)}" for w in plan["warnings"]),
    ]
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)


def _shadow_plan(shadow: dict[str, Any]) -> str:
    gates = ", ".join(f"{k} {v}" for k, v in shadow["gates"].items() if v is not None)
    models = ", ".join(escape(m["name"]) for m in shadow["models"])
    return (
        f"shadow phase: each wave's devices first run {models} of the target in shadow "
        f"for {duration(shadow['seconds'])} ({shadow['sample_rate']:.0%} of inferences), "
        f"and are moved only if its gates pass: {gates}"
    )


def _closed(wave: dict[str, Any]) -> str:
    closed = wave["sites_closed_now"]
    if not closed:
        return "-"
    return f"{sites(closed)} / {when(wave['opens_at']):%Y-%m-%d %H:%M} UTC"


def _offline_wait(plan: dict[str, Any]) -> str:
    wait = plan["offline_wait_seconds"]
    if not wait:
        return ""
    return f" (and up to {duration(wait)} more waiting for offline devices)"


# -- the list -------------------------------------------------------------------------

LIST_COLUMNS = ["id", "profile", "revision", "state", "wave", "ok/failed/devices", "by", "age"]


def list_row(rollout: dict[str, Any], now: datetime) -> dict[str, Any]:
    """One rollout summary as the list's cells."""
    counts, wave = rollout["counts"], rollout["current_wave"]
    return {
        "id": rollout["id"],
        "profile": rollout["profile"],
        "revision": f"{rollout['from_revision']} -> {rollout['revision']}",
        "state": rollout["state"],
        "wave": "-" if wave is None else f"{wave}/{rollout['waves_total']}",
        "ok/failed/devices": f"{counts['succeeded']}/{counts['failed']}/{rollout['devices']}",
        "by": rollout["created_by"] or "-",
        "age": duration((now - when(rollout["created_at"])).total_seconds()),
    }


# -- the status -----------------------------------------------------------------------


def status_view(rollout: dict[str, Any], now: datetime, note: str = "") -> RenderableType:
    """The whole status: the rollout's lines, its waves, its failed devices (the
    controller's ``failures``, where it sends them), its latest events; and ``note``, a
    passing problem of the watch itself."""
    parts: list[RenderableType] = [_heading(rollout, now)]
    if note:  # at the top: a live view taller than the terminal loses its bottom lines
        parts.append(Text(f"warning: {note}", style="yellow"))
    parts.append(_waves(rollout, now))
    if any(w.get("shadow") for w in rollout["waves"]):
        parts.append(_shadow(rollout["waves"]))
    if rollout.get("failures"):
        parts.append(_failures(rollout["failures"]))
    if rollout["events"]:
        parts.append(_events(rollout["events"], now))
    return Group(*parts)


def _heading(rollout: dict[str, Any], now: datetime) -> Text:
    wave = rollout["current_wave"]
    text = Text.assemble(
        (f"rollout {rollout['id']}", "bold"),
        f": profile {rollout['profile']}, revision {rollout['from_revision']} -> "
        f"{rollout['revision']}, ",
        state(rollout["state"]),
        f" (wave {wave}/{rollout['waves_total']})" if wave is not None else "",
    )
    if rollout["reason"]:
        text.append(f": {rollout['reason']}")
    counts = ", ".join(f"{n} {word}" for n, word in _counted(rollout["counts"]))
    text.append(f"\n{rollout['devices']} devices: {counts or 'none'}")
    text.append(f"\ncreated by {rollout['created_by'] or '-'} {ago(rollout['created_at'], now)}")
    if rollout["finished_at"]:
        text.append(f", finished {ago(rollout['finished_at'], now)}")
    return text


def _waves(rollout: dict[str, Any], now: datetime) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("wave", "step", "state", "devices"):
        table.add_column(name, no_wrap=True, justify="right" if name == "devices" else "left")
    table.add_column("progress", min_width=BAR, ratio=2)
    table.add_column("waiting for", ratio=1)
    table.add_column("gate", ratio=2)
    for wave in rollout["waves"]:
        table.add_row(
            str(wave["number"]),
            Text(wave["step"]),
            state(wave["state"]),
            str(wave["devices"]),
            _progress(wave["counts"], wave["devices"]),
            _waiting(wave, now),
            _gate(wave["gate"]),
        )
    return table


def _counted(counts: dict[str, int]) -> list[tuple[int, str]]:
    return [(counts[key], word) for key, word, _, _ in OUTCOMES if counts.get(key)]


def _progress(counts: dict[str, int], devices: int) -> Text:
    """A bar with one colour per outcome, then the non-zero counts in words."""
    bar, drawn, total = Text(), 0, 0
    for key, _, mark, colour in OUTCOMES:
        total += counts.get(key, 0)
        end = round(BAR * total / devices) if devices else 0
        bar.append(mark * (end - drawn), style=colour)
        drawn = end
    words = ", ".join(f"{n} {word}" for n, word in _counted(counts))
    return bar.append("\n" + (words or "no devices"))


def _waiting(wave: dict[str, Any], now: datetime) -> Text:
    """What holds the wave: its bake's remaining time, or sites' closed windows."""
    if wave["state"] == "baking" and wave["bake_until"]:
        left = (when(wave["bake_until"]) - now).total_seconds()
        return Text(f"bake, {duration(left)} left")
    if wave["state"] == "shadowing" and wave.get("shadow_until"):
        left = (when(wave["shadow_until"]) - now).total_seconds()
        return Text(f"shadow, {duration(max(left, 0))} left")
    if wave["waiting_for_window"]:
        return Text(f"window at {sites(wave['waiting_for_window'])}")
    return Text("-")


def _gate(gate: dict[str, Any] | None) -> Text:
    if gate is None:
        return Text("-")
    verdict = Text("ok", style="green") if gate["ok"] else Text("failed", style="red")
    return verdict.append(f": {gate['detail']}" if gate.get("detail") else "")


def _shadow(waves: list[dict[str, Any]]) -> Table:
    """Each wave's shadow evidence: per changed model, what the candidate did on the
    wave's devices before any was moved, and the verdict."""
    table = Table(
        "wave",
        "model",
        "devices",
        "compared",
        "top-1 agree",
        "MAD",
        "max diff",
        "p95 active / candidate",
        "input PSI",
        "verdict",
        title="shadow evidence",
        box=box.SIMPLE_HEAD,
    )
    for wave in waves:
        evidence = wave.get("shadow")
        if not evidence:
            continue
        verdict = evidence.get("verdict") or {}
        mark = _gate(verdict) if verdict else Text("-")
        if evidence.get("overridden_by"):
            mark = Text(f"resumed past by {evidence['overridden_by']}", style="yellow")
        for m in evidence.get("models", []):
            drift = m.get("drift")
            table.add_row(
                str(wave["number"]),
                Text(m["model"]),
                str(m["devices"]),
                str(m["compared"]),
                "-" if m["agreement"] is None else f"{m['agreement']:.1%}",
                _num(m["mad"]),
                _num(m["max_abs_diff"]),
                f"{_ms(m['active_p95_ms'])} / {_ms(m['candidate_p95_ms'])}",
                "-" if not drift else f"{drift['psi']:.3f}",
                mark,
            )
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def _events(events: list[dict[str, Any]], now: datetime) -> Table:
    shown = events[-EVENTS_SHOWN:]
    earlier = len(events) - len(shown)
    caption = f"{earlier} earlier events: -o json shows them all" if earlier else None
    table = Table("when", "actor", "action", "reason", caption=caption, box=box.SIMPLE_HEAD)
    for event in shown:
        table.add_row(
            ago(event["at"], now),
            Text(event["actor"]),
            state(event["action"]),
            Text(event["reason"] or "-"),
        )
    return table


def _failures(failures: list[dict[str, Any]]) -> Table:
    """The devices that failed, and what they said (the controller sends the first few)."""
    table = Table("failed device", "wave", "reason", box=box.SIMPLE_HEAD)
    for failure in failures:
        table.add_row(Text(failure["device"]), str(failure["wave"]), Text(failure["reason"]))
    return table
