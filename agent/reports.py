"""Update reports on their way to the controller: an outbox that survives restarts.

The evidence of a rollback matters most on a device whose network is bad, so a report
is written to disk before anything tries to send it: one JSON file per report under
``<state dir>/outbox/``, written atomically and fsynced (``agent/files.py``), named so
that names sort oldest first. A file is deleted only after the controller acknowledged
it; :meth:`Outbox.flush` uploads oldest first and stops at the first failure, so an
unreachable controller just leaves the reports for the next flush. The controller
keeps one record per (device, revision, started_at), so a report whose answer was lost
is simply sent again.

:func:`fit_evidence` turns raw evidence of any size into an :class:`UpdateEvidence`
within the wire's caps (the newest log lines are the ones kept), so building a report
never fails for being too big.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet.agent.files import atomic_write, ensure_dir, fsync_dir
from edgefleet.errors import ApiError
from edgefleet.wire import (
    MAX_EVIDENCE_BYTES,
    MAX_LATENCY_SAMPLES,
    MAX_LOG_LINE_CHARS,
    MAX_LOG_LINES,
    MAX_OUTPUT_CHARS,
    MAX_PROBE_VALUES,
    MAX_TEXT_CHARS,
    UpdateEvidence,
    UpdateOutcome,
    UpdateReport,
)

log = logging.getLogger("edgefleet.agent")

OUTBOX_DIR = "outbox"
REFUSED_DIR = "refused"
"""Under the outbox: reports that can never be sent (kept for a person to read)."""

_REFUSED_FOR_GOOD = frozenset({400, 413, 422})
"""Answers that sending the same report again cannot change; anything else (unreachable,
401, 429, 503...) leaves the report queued."""


class Outbox:
    """Update reports waiting for the controller, one file each, oldest first."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / OUTBOX_DIR

    def put(self, report: UpdateReport) -> Path:
        """Keep ``report`` on disk (durable when this returns) until it is acknowledged."""
        ensure_dir(self.folder)
        path = self.folder / f"{time.time_ns():020d}-r{report.outcome.revision}.json"
        atomic_write(path, report.model_dump_json(), 0o600)
        return path

    def pending(self) -> list[Path]:
        """Files waiting, oldest first (their names start with the time they were put)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.suffix == ".json" and p.is_file())

    def flush(self, send: Callable[[UpdateReport], object]) -> int:
        """Send every waiting report, oldest first; return how many were acknowledged.

        The first failure stops the flush and is raised; that report and the ones after
        it stay for the next flush. A report the controller refuses for good (400, 413,
        422), or one that no longer parses, is moved to ``outbox/refused/`` so it cannot
        block the ones behind it.
        """
        sent = 0
        for path in self.pending():
            try:
                report = UpdateReport.model_validate_json(path.read_bytes())
            except ValidationError as exc:  # written by an agent whose wire models differ
                self._set_aside(path, f"it no longer reads as a report: {exc.errors()[0]['msg']}")
                continue
            try:
                send(report)
            except ApiError as exc:
                if exc.status not in _REFUSED_FOR_GOOD:
                    raise
                self._set_aside(path, f"the controller refused it ({exc.code}): {exc.message}")
                continue
            _remove(path)
            sent += 1
        return sent

    def _set_aside(self, path: Path, why: str) -> None:
        refused = ensure_dir(self.folder / REFUSED_DIR)
        os.replace(path, refused / path.name)
        fsync_dir(self.folder)
        log.warning("update report %s set aside in %s: %s", path.name, refused, why)


def _remove(path: Path) -> None:
    path.unlink()
    fsync_dir(path.parent)


def fit_evidence(raw: Mapping[str, Any]) -> UpdateEvidence:
    """``raw`` (the shape of :class:`UpdateEvidence`, any size) cut to fit the wire.

    Only the fields the wire knows are taken from each entry, so a check result with
    more in it (``ok``, ``duration_s``...) can be passed as it is.

    Each string and list is cut to its cap (a check's output keeps its end, where the
    error usually is; the log keeps its newest lines); then, while the whole is over
    ``MAX_EVIDENCE_BYTES``, the oldest half of the log goes, then half the latency
    samples, then the checks' outputs shrink.
    """
    checks = [
        {
            "name": c["name"],
            "detail": str(c.get("detail", ""))[:MAX_TEXT_CHARS],
            "output": _tail(str(c.get("output", "")), MAX_OUTPUT_CHARS),
        }
        for c in raw.get("failed_checks", [])
    ]
    probe = [
        {
            "model": m["model"],
            "output": m["output"],
            "expected": list(m.get("expected", []))[:MAX_PROBE_VALUES],
            "actual": list(m.get("actual", []))[:MAX_PROBE_VALUES],
            "detail": str(m.get("detail", ""))[:MAX_TEXT_CHARS],
        }
        for m in raw.get("probe", [])
    ]
    doc: dict[str, Any] = {
        "failed_checks": checks,
        "probe": probe,
        "latency": [
            {
                "model": m["model"],
                "samples_ms": list(m.get("samples_ms", []))[:MAX_LATENCY_SAMPLES],
                "budget_ms": m.get("budget_ms"),
            }
            for m in raw.get("latency", [])
        ],
        "log": [str(line)[:MAX_LOG_LINE_CHARS] for line in raw.get("log", [])][-MAX_LOG_LINES:],
    }
    output_cap = MAX_OUTPUT_CHARS
    while _size(doc) > MAX_EVIDENCE_BYTES:
        if doc["log"]:
            doc["log"] = doc["log"][len(doc["log"]) // 2 + 1 :]
        elif any(m["samples_ms"] for m in doc["latency"]):
            for m in doc["latency"]:
                m["samples_ms"] = m["samples_ms"][: len(m["samples_ms"]) // 2]
        elif output_cap > 0:
            output_cap //= 4
            for check in checks:
                check["output"] = _tail(check["output"], output_cap)
        else:
            break  # what is left is refused by the model, with its size
    return UpdateEvidence.model_validate(doc)


def _tail(text: str, limit: int) -> str:
    return text[-limit:] if limit else ""


def _size(doc: dict[str, Any]) -> int:
    """A little over pydantic's compact JSON (which writes non-ASCII as UTF-8)."""
    return len(json.dumps(doc, separators=(",", ":"), default=str))


def report_of(bundle: Mapping[str, Any]) -> UpdateReport:
    """The controller's view of an attempt's evidence bundle (``agent/update/evidence``):
    the outcome, the failed checks with their output, the probe's expected and actual
    values, the latency samples and the attempt's log lines, cut to the wire's caps."""
    failed, probe, latency = [], [], []
    for check in bundle.get("checks", []):
        found = check.get("evidence") or {}
        if check["name"] == "probe":
            probe += [
                {"model": model, "output": output, **shown, "detail": check["detail"]}
                for model, outputs in found.items()
                if isinstance(outputs, dict)
                for output, shown in outputs.items()
                if isinstance(shown, dict) and "expected" in shown
            ]
        elif check["name"] == "latency":
            latency += [
                {"model": model, **stats}
                for model, stats in found.items()
                if isinstance(stats, dict)
            ]
        if not check["ok"]:
            output = "\n".join(str(found.get(k, "")) for k in ("stdout", "stderr") if found.get(k))
            failed.append(
                {
                    "name": check["name"],
                    "detail": check["detail"],
                    "output": output or json.dumps(found, default=str),
                }
            )
    evidence = fit_evidence(
        {"failed_checks": failed, "probe": probe, "latency": latency, "log": bundle.get("log", [])}
    )
    return UpdateReport(outcome=outcome_of(bundle), evidence=evidence)


def outcome_of(attempt: Mapping[str, Any]) -> UpdateOutcome:
    """How an attempt ended, in the wire's shape: from an evidence bundle, or the
    engine's last outcome as a dict (``dataclasses.asdict``)."""
    return UpdateOutcome(
        revision=attempt["revision"],
        outcome=attempt["outcome"],
        slot=attempt.get("slot") or None,
        reason=str(attempt.get("reason", ""))[:MAX_TEXT_CHARS],
        started_at=attempt["started_at"],
        finished_at=attempt["finished_at"],
    )
