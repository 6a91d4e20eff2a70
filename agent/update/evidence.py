"""The evidence bundle of an attempt, and the agent's log lines that go into it.

The log of an attempt is appended to a file while the attempt runs, not kept in
memory, so the lines before a crash are in the bundle written after the restart.
A bundle is ``<state dir>/evidence/<revision>-<start time>.json``: which checks failed
and their output (probe expected against actual, latency samples, a command's
output), the reason, the boot-control record, the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgefleet.agent.files import write_json

MAX_LOG_LINES = 500
"""The last lines of an attempt's log kept in its bundle."""
LOGGER = "edgefleet.agent"


@contextmanager
def captured(path: Path) -> Iterator[None]:
    """Append the agent's log records to ``path`` while the block runs."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # an attempt's info lines are evidence too
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-MAX_LOG_LINES:]
    except FileNotFoundError:
        return []


def bundle_path(folder: Path, revision: int, started_at: str) -> Path:
    stamp = started_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    return folder / f"{revision}-{stamp}.json"


def write_bundle(path: Path, bundle: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, bundle)
    return path
