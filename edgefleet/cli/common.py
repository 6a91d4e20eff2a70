"""What every operator command shares: the controller client and error handling."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from edgefleet.cli import config
from edgefleet.cli.client import Controller
from edgefleet.errors import EdgefleetError

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


class Globals:
    """Root options, kept on the Typer context; ``transport`` lets tests swap the wire."""

    def __init__(self, url: str | None, token: str | None, ca_file: Path | None) -> None:
        self.url, self.token, self.ca_file = url, token, ca_file
        self.transport: Any = None

    def controller(self) -> Controller:
        return Controller(config.load(self.url, self.token, self.ca_file), self.transport)


def controller(ctx: typer.Context) -> Controller:
    root = ctx.find_root()
    if not isinstance(root.obj, Globals):
        root.obj = Globals(None, None, None)
    return root.obj.controller()


def handled(fn: F) -> F:
    """End a command with the controller's message and exit code 1 on any Edgefleet error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgefleetError as exc:
            err.print(f"[red]error[/red] ({exc.code}): {exc.message}", highlight=False)
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]
