"""The ``edgefleet`` console script.

``edgefleet agent run`` hands over to the agent's own small entry point before
Typer or Rich are imported, so the device daemon never carries them; every
other command goes to the Typer app.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] == ["agent", "run"]:
        from edgefleet.agent.main import main as agent_main

        raise SystemExit(agent_main(argv[2:]))
    from edgefleet.cli.app import app

    app()
