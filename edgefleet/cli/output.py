"""Printing results: Rich tables for people, ``--output json`` for scripts."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


class Format(StrEnum):
    table = "table"
    json = "json"


OutputOpt = typer.Option(Format.table, "--output", "-o", help="table or json")


def show(rows: list[dict[str, Any]] | dict[str, Any], fmt: Format, columns: list[str]) -> None:
    if fmt == Format.json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    items = rows if isinstance(rows, list) else [rows]
    table = Table(*columns)
    for row in items:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
