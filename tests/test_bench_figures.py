"""bench/figures.py writes one JSON line per figure and judges it against its budget;
bench/all.py turns such lines into its table and bench/RESULTS.md. No bench runs here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import all as bench_all
from bench import figures


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "figures.jsonl"
    monkeypatch.setenv(figures.OUT_ENV, str(path))
    monkeypatch.setattr(sys, "argv", ["bench/enrol.py", "--runs", "1"])
    return path


def test_figure_appends_one_json_line_with_its_script_and_args(out: Path) -> None:
    figures.figure("enrolments/s", 659, "/s", budget=500, better="higher", note="median of 1",
                   settings={"database": "SQLite"})  # fmt: skip
    figures.figure("enrol p99", 69, "ms", budget=200)
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first == {
        "name": "enrolments/s",
        "value": 659.0,
        "unit": "/s",
        "budget": 500,
        "better": "higher",
        "pass": True,
        "note": "median of 1",
        "settings": {"database": "SQLite"},
        "script": "enrol.py",
        "args": ["--runs", "1"],
    }
    assert second["name"] == "enrol p99" and second["pass"] is True


def test_higher_is_better_fails_below_the_budget(out: Path) -> None:
    assert figures.figure("rate", 499.9, "/s", budget=500, better="higher")["pass"] is False
    assert figures.figure("rate", 500, "/s", budget=500, better="higher")["pass"] is True


def test_lower_is_better_fails_above_the_budget(out: Path) -> None:
    assert figures.figure("latency", 200.1, "ms", budget=200)["pass"] is False
    assert figures.figure("latency", 12, "ms", budget=200)["pass"] is True
    assert figures.figure("duplicates", 0, "", budget=0)["pass"] is True


def test_a_figure_without_budget_is_reported_not_judged(out: Path) -> None:
    assert figures.figure("RSS", 65.5, "MB")["pass"] is None
    assert json.loads(out.read_text())["budget"] is None


def test_without_the_variable_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(figures.OUT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert figures.figure("x", 1, "ms", budget=2)["pass"] is True
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_direction_is_refused() -> None:
    with pytest.raises(ValueError):
        figures.judge(1, 2, "sideways")  # type: ignore[arg-type]


LINES = [
    {"name": "enrolments/s, real CSRs (SQLite)", "value": 659.4, "unit": "/s", "budget": 500,
     "better": "higher", "pass": True, "note": "median of 1", "script": "enrol.py",
     "args": ["--runs", "1"], "settings": {"database": "SQLite", "controller workers": 2}},
    {"name": "enrolments/s, real CSRs (PostgreSQL)", "value": 412.0, "unit": "/s",
     "budget": 500, "better": "higher", "pass": False, "note": "a | pipe", "script": "enrol.py",
     "args": ["--runs", "1", "--database-url", "postgresql://x"],
     "settings": {"database": "PostgreSQL"}},
    {"name": "runner RSS idle, tiny model", "value": 65.5, "unit": "MB", "budget": None,
     "better": "lower", "pass": None, "note": "", "script": "runner.py", "args": [],
     "settings": {}},
]  # fmt: skip


def test_records_group_back_into_runs_by_script_and_args() -> None:
    runs = bench_all.runs_from_records(LINES)
    assert [r.label for r in runs] == ["enrol (SQLite)", "enrol (PostgreSQL)", "runner"]
    assert [len(r.records) for r in runs] == [1, 1, 1]


def test_markdown_puts_every_figure_beside_its_budget_with_the_machine() -> None:
    runs = bench_all.runs_from_records(LINES)
    machine = {"date": "2026-12-06 03:00 UTC", "CPU": "AMD EPYC", "cores": "2"}
    settings = {"SQLite (controller and agent buffer)": "journal_mode=WAL, synchronous=FULL"}
    text = bench_all.markdown(runs, machine, settings, wall_s=240)
    assert "2026-12-06 03:00 UTC, 4.0 min wall time" in text
    assert "- CPU: AMD EPYC" in text and "- cores: 2" in text
    assert "journal_mode=WAL, synchronous=FULL" in text
    assert "| enrol (SQLite) | enrolments/s, real CSRs (SQLite) | 659/s | ≥ 500/s | pass |" in text
    assert "| 412/s | ≥ 500/s | FAIL | a \\| pipe |" in text
    assert "| runner | runner RSS idle, tiny model | 65.5 MB | reported | - |  |" in text
    assert "`--runs 1 --database-url postgresql://x`" in text
    assert "2 of 3 within budget" not in text and "1 of 2 within budget" in text


def test_a_failed_bench_is_a_row_saying_so() -> None:
    failed = bench_all.Run("drain.py", ["--runs", "1"], "SQLite", seconds=3.0, returncode=1,
                           tail="SystemExit: not drained in 10 minutes")  # fmt: skip
    quiet = bench_all.Run("gateway.py", [], "-", tail="through the gateway: +0.29 ms")
    rows = bench_all.rows([failed, quiet])
    assert rows[0] == ["drain (SQLite)", "bench failed (exit 1)", "-", "-", "FAIL",
                       "SystemExit: not drained in 10 minutes"]  # fmt: skip
    assert rows[1][1] == "(no figures reported: text only)" and rows[1][4] == "-"
    assert "failed benches: drain (SQLite)" in bench_all.summary([failed, quiet])


def test_the_rich_table_has_a_row_per_figure() -> None:
    console = Console(width=200, record=True)
    console.print(bench_all.rich_table(bench_all.runs_from_records(LINES)))
    shown = console.export_text()
    assert "659/s" in shown and "≥ 500/s" in shown and "FAIL" in shown and "reported" in shown


def test_render_writes_results_from_a_jsonl_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = tmp_path / "figures.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in LINES))
    md = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench_all, "machine_info", lambda: {"date": "today", "CPU": "test"})
    monkeypatch.setattr(bench_all, "settings_info", lambda: {"workers": "2"})
    monkeypatch.setattr(sys, "argv", ["all.py", "--render", str(lines), "--out", str(md)])
    bench_all.main()  # a figure over budget is not a failed bench: no exit status
    assert "| enrol (PostgreSQL) | enrolments/s, real CSRs (PostgreSQL) | 412/s |" in md.read_text()
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--strict"])
    with pytest.raises(SystemExit):
        bench_all.main()


def test_a_value_that_would_round_to_its_budget_keeps_its_digits() -> None:
    short = {**LINES[1], "value": 499.6}
    assert bench_all.value_text(short) == "499.60"
    assert bench_all.value_text(LINES[1]) == "412"


def test_a_median_of_one_run_says_one_run() -> None:
    assert figures.median_of(1) == "1 run"
    assert figures.median_of(3) == "median of 3 runs"
