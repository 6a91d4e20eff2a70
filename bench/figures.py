"""One call per measured figure, so that ``bench/all.py`` can put every figure of every
bench beside its budget in one table.

A bench keeps printing its own lines for a person; ``figure`` adds the machine's copy:
when ``EDGEFLEET_BENCH_OUT`` names a file, one JSON line per figure is appended to it
(name, value, unit, budget, which way is better, pass or fail, the settings it ran with,
the script and its arguments). Without the variable it does nothing but judge.

A budget is met when the value is at least the budget (``better="higher"``) or at most
the budget (``better="lower"``); a figure without a budget is reported, never judged.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

OUT_ENV = "EDGEFLEET_BENCH_OUT"

Better = Literal["higher", "lower"]


def judge(value: float, budget: float | None, better: Better) -> bool | None:
    """True when ``value`` meets ``budget``, None when there is no budget."""
    if budget is None:
        return None
    if better == "higher":
        return value >= budget
    if better == "lower":
        return value <= budget
    raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    budget: float | None = None,
    better: Better = "lower",
    note: str = "",
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record one figure; returns the record (written as a JSON line when asked)."""
    record = {
        "name": name,
        "value": float(value),
        "unit": unit,
        "budget": budget,
        "better": better,
        "pass": judge(value, budget, better),
        "note": note,
        "settings": settings or {},
        "script": Path(sys.argv[0]).name,
        "args": sys.argv[1:],
    }
    out = os.environ.get(OUT_ENV)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def median_of(n: int, what: str = "runs") -> str:
    """``median of 3 runs``, or ``1 run`` (a median of one is not one)."""
    return f"median of {n} {what}" if n != 1 else f"1 {what.removesuffix('s')}"


def database(url: str | None) -> str:
    """The database a bench ran on, as the table names it."""
    return "PostgreSQL" if url else "SQLite"
