"""The device daemon never carries the controller's or the operator CLI's dependencies."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = (
    "fastapi",
    "sqlmodel",
    "sqlalchemy",
    "typer",
    "rich",
    "click",
    "pygments",
    "edgefleet.controller",
)
"""The controller's and the operator CLI's dependencies; click and pygments come in
with rich through httpx's own CLI unless the agent keeps it out."""


def _offenders(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def _modules_after(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_agent_main_imports_nothing_from_controller_or_cli():
    modules = _modules_after(
        "import sys, edgefleet.agent.main, edgefleet.agent.daemon\n"
        "print(*sorted(k for k, v in sys.modules.items() if v is not None))"
    )
    assert "httpx" in modules  # the check sees real imports
    assert _offenders(modules) == []
    # httpx's CLI (which imports rich where it is installed) is kept out even on a
    # machine without rich, where the check above could not notice it.
    assert "httpx._main" not in modules


def test_edgefleet_agent_run_through_the_cli_entry_imports_no_typer_or_rich():
    """``edgefleet agent run --help`` via the console-script entry, modules listed at exit."""
    code = (
        "import atexit, os, sys\n"
        "loaded = lambda: sorted(k for k, v in sys.modules.items() if v is not None)\n"
        "atexit.register(lambda: os.write(1, ' '.join(loaded()).encode()))\n"
        "sys.argv = ['edgefleet', 'agent', 'run', '--help']\n"
        "from edgefleet.cli.entry import main\n"
        "main()\n"
    )
    modules = _modules_after(code)
    assert "edgefleet.agent.main" in modules
    assert _offenders(modules) == []
