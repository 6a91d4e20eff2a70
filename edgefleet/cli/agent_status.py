"""``edgefleet agent status``: the A/B slots, the last update, the result buffer and,
on a device still waiting to be claimed, its claim's code and page, read on the device.

It reads the agent's state directory and never talks to the controller, so it works
offline, on the device, while the agent runs: the boot-control record
(``<state dir>/slots/boot.0.json`` and ``boot.1.json``; the newest valid copy wins,
exactly as the agent reads it) and the newest evidence bundle of an update attempt
(``<state dir>/evidence/*.json``), and the result buffer's depth, age and drops
(``<state dir>/results/results.db``), and the QR claim it shows
(``<state dir>/claim.json``; its secret is never printed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.agent.buffer import Buffer
from edgefleet.agent.claim import CLAIM_PNG
from edgefleet.agent.claim import load as load_claim
from edgefleet.agent.identity import load_enrolment
from edgefleet.agent.results import RESULTS_DB, RESULTS_FOLDER
from edgefleet.agent.settings import DEFAULT_STATE_DIR
from edgefleet.agent.slots.record import SLOTS, BootControl, Record
from edgefleet.cli.common import handled
from edgefleet.cli.output import Format, OutputOpt, console
from edgefleet.cli.updates import OUTCOME_STYLE
from edgefleet.errors import ConfigError

SLOTS_DIR = "slots"
EVIDENCE_DIR = "evidence"


@handled
def status(
    state_dir: Path = typer.Option(
        DEFAULT_STATE_DIR, envvar="EDGEFLEET_AGENT_STATE_DIR", help="The agent's state directory"
    ),
    output: Format = OutputOpt,
) -> None:
    """Both slots, the active one and the last update's outcome, from the device's disk."""
    if not state_dir.is_dir():
        raise ConfigError(f"{state_dir} is not an agent state directory (--state-dir)")
    found = read_status(state_dir)
    if output == Format.json:
        typer.echo(json.dumps(found, indent=2))
        return
    _render(found)


def read_status(state_dir: Path) -> dict[str, Any]:
    """What the device knows about its slots and its last update, as plain data."""
    record: Record = BootControl(state_dir / SLOTS_DIR).load()
    return {
        "active_slot": record.active,
        "trying": record.trying,
        "attempts_left": record.attempts_left,
        "slots": [
            {
                "name": name,
                "state": record.slots[name].state,
                "revision": record.slots[name].revision,
                "reason": record.slots[name].reason,
            }
            for name in SLOTS
        ],
        "last_update": _last_bundle(state_dir / EVIDENCE_DIR),
        "buffer": _buffer(state_dir / RESULTS_FOLDER / RESULTS_DB),
        "claim": _claim(state_dir),
    }


def _claim(state_dir: Path) -> dict[str, Any] | None:
    """The claim the device shows while nobody has approved it; None once enrolled."""
    claim = load_claim(state_dir)
    if claim is None or load_enrolment(state_dir) is not None:
        return None
    return {
        "id": claim.id,
        "code": claim.code,
        "url": claim.url,
        "expires_at": claim.expires_at,
        "png": str(state_dir / CLAIM_PNG),
    }


def _buffer(path: Path) -> dict[str, Any] | None:
    """What waits for the controller; None on a device that never stored a result."""
    if not path.exists():
        return None
    with Buffer(path) as buffer:
        stats = buffer.stats()
        return {
            "depth": stats.depth,
            "bytes": stats.bytes,
            "oldest_age_seconds": stats.oldest_age_seconds,
            "drops": stats.drops,
            "acked": buffer.acked,
            "cap_bytes": stats.cap_bytes,
            "policy": buffer.policy.value,
            "capacity_hours": stats.capacity_hours,
        }


def _last_bundle(folder: Path) -> dict[str, Any] | None:
    """The evidence bundle of the attempt that finished last (unreadable ones skipped)."""
    bundles = []
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "outcome" in doc:
            bundles.append({**doc, "evidence": str(path)})
    return max(bundles, key=lambda b: str(b.get("finished_at", "")), default=None)


def _render(found: dict[str, Any]) -> None:
    claim = found["claim"]
    if claim is not None:
        console.print(
            f"waiting to be claimed: confirmation code [bold]{claim['code']}[/bold] at "
            f"{escape(claim['url'])} (expires {claim['expires_at']}; QR code in "
            f"{escape(claim['png'])})",
            highlight=False,
        )
    _render_slots(found)
    buffer = found["buffer"]
    if buffer is None:
        console.print("results: none stored yet")
        return
    age = buffer["oldest_age_seconds"]
    waiting = f", oldest {age:.0f} s old" if age is not None else ""
    drops = ", ".join(f"{n} {reason}" for reason, n in buffer["drops"].items()) or "none"
    hours = buffer["capacity_hours"]
    holds = f", holds about {hours:.0f} h at the profile's rate" if hours is not None else ""
    console.print(
        f"results: {buffer['depth']} waiting for the controller ({buffer['bytes']} bytes"
        f"{waiting}), acked through {buffer['acked']}; cap {buffer['cap_bytes']} bytes"
        f"{holds}, drop policy {buffer['policy']}; dropped: {drops}",
        highlight=False,
        markup=False,
    )


def _render_slots(found: dict[str, Any]) -> None:
    active = found["active_slot"]
    table = Table("slot", "state", "revision", "reason", title=f"slots (active: {active or '-'})")
    for slot in found["slots"]:
        name = slot["name"] + (" *" if slot["name"] == active else "")
        revision = "-" if slot["revision"] is None else str(slot["revision"])
        table.add_row(name, slot["state"], revision, escape(slot["reason"]))
    console.print(table)
    if found["trying"]:
        console.print(f"trying slot {found['trying']}, {found['attempts_left']} attempt(s) left")
    last = found["last_update"]
    if last is None:
        console.print("last update: none on record")
        return
    style = OUTCOME_STYLE.get(last["outcome"], "bold")
    reason = f": {escape(last['reason'])}" if last.get("reason") else ""
    console.print(
        f"last update: revision {last['revision']} in slot {last.get('slot') or '-'} "
        f"[{style}]{last['outcome']}[/{style}] at {last.get('finished_at', '-')}{reason}",
        highlight=False,
    )
    for check in last.get("failed_checks", []):
        what = escape(f"{check.get('name', '?')}: {check.get('detail', '')}")
        console.print(f"  [red]✗[/red] {what}", highlight=False)
    console.print(f"evidence: {last['evidence']}", highlight=False, markup=False)
