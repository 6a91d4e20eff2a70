"""``make bench``: every benchmark of the project with short settings, then one table of
every figure beside its budget, written to ``bench/RESULTS.md`` with the machine and the
settings it ran with.

    python bench/all.py [--only NAME ...] [--no-postgres] [--strict] [--out bench/RESULTS.md]
    python bench/all.py --render figures.jsonl   # the table again from a run's JSON lines

Each bench runs in turn as its own process, on SQLite and, where it has
``--database-url``, on PostgreSQL, with the quick flags listed in ``BENCHES`` (fewer
runs, seconds and records than the figures in the README: ``make bench-full`` runs
those). A bench reports its figures through ``bench/figures.py`` into a JSON-lines file
named by ``EDGEFLEET_BENCH_OUT``; its own text output is kept in a log beside it. A bench
that fails becomes a row saying so and the others still run; the exit status is 1 when
any failed (with ``--strict``, also when a figure is over its budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POSTGRES_URL = os.environ.get(
    "EDGEFLEET_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TIMEOUT_S = 900


@dataclass(frozen=True)
class Bench:
    """A script in bench/ and the flags that make it quick; ``postgres`` runs it a second
    time with ``--database-url``, ``sqlite=False`` only there."""

    script: str
    quick: tuple[str, ...] = ()
    postgres: bool = False
    sqlite: bool = True


# The quick settings, all in one place. Sizes a budget is stated for (10,000 devices,
# 100,000 in a plan, a 50 MB model) stay; runs, seconds, starts and records shrink.
BENCHES: list[Bench] = [
    Bench("enrol.py", ("--runs", "1", "--seconds", "5"), postgres=True),
    Bench("desired.py", ("--runs", "1", "--seconds", "5"), postgres=True),
    Bench("replicas.py", ("--runs", "1", "--seconds", "5", "--devices", "5"), postgres=True,
          sqlite=False),
    Bench("replica_scaling.py", ("--runs", "1", "--seconds", "5"), postgres=True, sqlite=False),
    Bench("agent.py", ("--starts", "3", "--idle-seconds", "15")),
    Bench("claim.py", ("--runs", "3"), postgres=True),
    Bench("gitops.py", ("--runs", "1")),
    Bench("gitops_controller.py", ("--assigns", "10")),
    Bench("pull.py", ("--runs", "3")),
    Bench("runner.py", ("--loads", "5", "--calls", "500")),
    Bench("drift.py", ("--updates", "5000", "--predicts", "3000")),
    Bench("shadow.py", ("--runs", "3", "--calls", "300", "--restarts", "2")),
    Bench("gateway.py", ("--calls", "200", "--runs", "1")),
    Bench("update.py", ("--runs", "2")),
    Bench("buffer.py", ("--runs", "1", "--single", "2000")),
    Bench("drain.py", ("--runs", "1", "--records", "100000"), postgres=True),
    Bench("rollout_plan.py", ("--runs", "3"), postgres=True),
    Bench("rollout_engine.py", (), postgres=True),
    Bench("device_list.py", ("--runs", "5"), postgres=True),
    Bench("console.py", ("--runs", "5"), postgres=True),
    Bench("status_samples.py", ("--minutes", "5", "--results", "100000"), postgres=True),
    Bench("ingest.py", ("--runs", "3"), postgres=True),
    Bench("simulate.py", ("--devices", "2000", "--interval", "10", "--duration", "60"),
          postgres=True),
    # bench/images.py is left out: a cold image build takes minutes (`make images`).
]  # fmt: skip


@dataclass
class Run:
    """One bench process: what ran, how it ended, the figures it reported."""

    script: str
    args: list[str]
    database: str
    seconds: float = 0.0
    returncode: int | None = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    tail: str = ""

    @property
    def label(self) -> str:
        name = self.script.removesuffix(".py")
        return f"{name} ({self.database})" if self.database != "-" else name

    @property
    def failed(self) -> bool:
        return self.returncode != 0

    def settings(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for r in self.records:
            merged.update(r.get("settings") or {})
        return merged


def planned(only: list[str], postgres: bool) -> list[tuple[Bench, str | None]]:
    """(bench, database URL or None for SQLite) in the order they run."""
    out: list[tuple[Bench, str | None]] = []
    for b in BENCHES:
        if only and not any(o in b.script for o in only):
            continue
        if b.sqlite:
            out.append((b, None))
        if b.postgres and postgres:
            out.append((b, POSTGRES_URL))
    return out


def run_one(bench: Bench, url: str | None, logs: Path) -> Run:
    args = [*bench.quick, *(["--database-url", url] if url else [])]
    db = "PostgreSQL" if url else ("SQLite" if bench.postgres else "-")
    run = Run(bench.script, args, db)
    stem = f"{bench.script.removesuffix('.py')}-{db.lower()}"
    out, log = logs / f"{stem}.jsonl", logs / f"{stem}.log"
    env = dict(os.environ, EDGEFLEET_BENCH_OUT=str(out), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / bench.script), *args],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        try:
            run.returncode = proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            run.returncode = None
    run.seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    run.tail = lines[-1].strip() if lines else ""
    if run.returncode is None:
        run.tail = f"timed out after {TIMEOUT_S} s; {run.tail}"
    run.records = read_records(out)
    return run


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runs_from_records(records: list[dict[str, Any]]) -> list[Run]:
    """Group JSON lines (from one file) back into runs, in the order they appear."""
    runs: dict[tuple[str, tuple[str, ...]], Run] = {}
    for r in records:
        key = (r["script"], tuple(r.get("args") or ()))
        if key not in runs:
            both = any(b.script == r["script"] and b.postgres for b in BENCHES)
            db = "PostgreSQL" if "--database-url" in key[1] else ("SQLite" if both else "-")
            runs[key] = Run(r["script"], list(key[1]), db)
        runs[key].records.append(r)
    return list(runs.values())


# --- formatting ---------------------------------------------------------------------


def number(value: float) -> str:
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def with_unit(text: str, unit: str) -> str:
    if not unit:
        return text
    tight = unit.startswith(("/", "%", "x "))
    return f"{text}{unit}" if tight else f"{text} {unit}"


def value_text(r: dict[str, Any]) -> str:
    """The value, with more digits when rounding would make it read as its budget."""
    text = number(r["value"])
    if r.get("budget") is not None and r["value"] != r["budget"]:
        b = float(r["budget"])
        if text == number(b) or text == f"{int(b):,}":
            text = f"{r['value']:,.2f}"
    return text


def budget_text(r: dict[str, Any]) -> str:
    if r.get("budget") is None:
        return "reported"
    sign = "≥" if r["better"] == "higher" else "≤"
    b = float(r["budget"])
    text = f"{int(b):,}" if b.is_integer() else number(b)
    return f"{sign} {with_unit(text, r['unit'])}"


def verdict(r: dict[str, Any]) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[r.get("pass")]


def rows(runs: list[Run]) -> list[list[str]]:
    """[bench, figure, value, budget, result, note] for every figure, and one row per failed
    or figure-less bench."""
    out = []
    for run in runs:
        for r in run.records:
            value = with_unit(value_text(r), r["unit"])
            out.append([run.label, r["name"], value, budget_text(r), verdict(r), r["note"]])
        if run.failed:
            how = "timed out" if run.returncode is None else f"exit {run.returncode}"
            out.append([run.label, f"bench failed ({how})", "-", "-", "FAIL", run.tail])
        elif not run.records:
            out.append([run.label, "(no figures reported: text only)", "-", "-", "-", run.tail])
    return out


def summary(runs: list[Run]) -> str:
    figures = [r for run in runs for r in run.records]
    judged = [r for r in figures if r["pass"] is not None]
    over = [r["name"] for r in judged if not r["pass"]]
    failed = [run.label for run in runs if run.failed]
    text = (
        f"{len(figures)} figures from {len(runs)} runs: {len(judged) - len(over)} of "
        f"{len(judged)} within budget"
    )
    if over:
        text += f"; over budget: {', '.join(over)}"
    if failed:
        text += f"; failed benches: {', '.join(failed)}"
    return text


def rich_table(runs: list[Run]) -> Table:
    table = Table(title="Edgefleet benchmarks (quick settings)", show_lines=False)
    for name, justify in (
        ("bench", "left"),
        ("figure", "left"),
        ("value", "right"),
        ("budget", "right"),
        ("result", "center"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    style = {"pass": "green", "FAIL": "bold red", "-": "dim"}
    for row in rows(runs):
        row = [*row[:4], f"[{style[row[4]]}]{row[4]}[/]", row[5]]
        table.add_row(*row)
    return table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(
    runs: list[Run], machine: dict[str, str], settings: dict[str, str], wall_s: float | None
) -> str:
    lines = ["# Benchmark results", ""]
    when = machine.get("date", "")
    took = f", {wall_s / 60:.1f} min wall time" if wall_s is not None else ""
    lines += [
        f"`make bench` (`python bench/all.py`), {when}{took}. Quick settings: fewer runs, "
        "seconds and records than the README's figures (`make bench-full`); one run per "
        "figure, so expect noise. Budgets are the README's.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine.items() if k != "date"],
        "",
        "## Settings",
        "",
        *[f"- {k}: {v}" for k, v in settings.items()],
        "",
        "## Runs",
        "",
        "| bench | flags | wall time | exit | settings reported |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        flags = " ".join(run.args) or "(defaults)"
        ended = "timed out" if run.returncode is None else str(run.returncode)
        reported = "; ".join(f"{k}: {v}" for k, v in run.settings().items())
        lines.append(
            f"| {_cell(run.label)} | `{_cell(flags)}` | {run.seconds:.0f} s | {ended} "
            f"| {_cell(reported)} |"
        )
    lines += [
        "",
        "## Figures",
        "",
        "| bench | figure | value | budget | result | note |",
        "| --- | --- | ---: | ---: | :---: | --- |",
    ]
    for row in rows(runs):
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines += ["", summary(runs), ""]
    return "\n".join(lines)


# --- the machine and its settings ---------------------------------------------------


def _proc(path: str, pattern: str) -> str | None:
    try:
        found = re.search(pattern, Path(path).read_text(), re.M)
    except OSError:
        return None
    return found.group(1).strip() if found else None


def _postgres() -> dict[str, str]:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=5) as conn:
            return {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("server_version", "synchronous_commit", "fsync", "max_connections")
            }
    except Exception as exc:  # reported in the header, not fatal
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def machine_info() -> dict[str, str]:
    mem_kb = _proc("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    pg = _postgres()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": _proc("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor(),
        "cores": str(os.cpu_count()),
        "RAM": f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb else "unknown",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL server": pg.get("server_version", pg.get("error", "unknown")),
    }


def settings_info() -> dict[str, str]:
    pg = _postgres()
    workers = os.environ.get("EDGEFLEET_WORKERS") or f"{os.cpu_count()} (its default: one a core)"
    pg_sync = (
        f"synchronous_commit={pg['synchronous_commit']}, fsync={pg['fsync']} (the server's)"
        if "synchronous_commit" in pg
        else f"unavailable ({pg.get('error')})"
    )
    return {
        "controller workers": f"{workers}; bench/agent.py 1, bench/claim.py 2 (their own "
        "choice); each run's own figure is in the Runs table",
        "controller database threads": os.environ.get("EDGEFLEET_DB_THREADS")
        or "2 per worker on SQLite, 4 on PostgreSQL (the default)",
        "SQLite (controller and agent buffer)": "journal_mode=WAL, synchronous=FULL",
        "PostgreSQL": f"{pg_sync}; each bench in a schema of its own at {POSTGRES_URL}",
        "rate limits": "enrolment and token limits off in the controllers the benches start",
        "load": "wrk and the benches share this machine's cores with the controller; load "
        f"average at the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min)",
    }


# --- main ----------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=[], help="scripts whose name contains one")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 on a figure over budget too")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--render", type=Path, help="render this JSON-lines file; run nothing")
    args = p.parse_args()
    console = Console()
    if not console.is_terminal:  # a log or a pipe: room for the notes
        console = Console(width=160)

    if args.render:
        runs = runs_from_records(read_records(args.render))
        wall: float | None = None
    else:
        logs = Path(tempfile.mkdtemp(prefix="ef-bench-all-"))
        todo = planned(args.only, not args.no_postgres)
        console.print(f"{len(todo)} bench runs; logs and JSON lines in {logs}")
        runs, started = [], time.monotonic()
        for i, (bench, url) in enumerate(todo, 1):
            run = run_one(bench, url, logs)
            runs.append(run)
            state = "[red]FAILED[/]" if run.failed else "ok"
            console.print(
                f"[{i}/{len(todo)}] {run.label} {' '.join(run.args)}: {run.seconds:.0f} s, "
                f"{len(run.records)} figures, {state}",
                highlight=False,
            )
            if run.failed:
                console.print(f"    {run.tail}", highlight=False, markup=False)
        wall = time.monotonic() - started
        with (logs / "figures.jsonl").open("w") as f:
            for run in runs:
                for r in run.records:
                    f.write(json.dumps(r, sort_keys=True) + "\n")

    console.print(rich_table(runs))
    console.print(summary(runs), highlight=False)
    text = markdown(runs, machine_info(), settings_info(), wall)
    args.out.write_text(text)
    console.print(f"written to {args.out}" + (f"; wall time {wall:.0f} s" if wall else ""))
    over = any(r["pass"] is False for run in runs for r in run.records)
    if any(run.failed for run in runs) or (args.strict and over):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
