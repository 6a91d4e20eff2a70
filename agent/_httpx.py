"""httpx, without its command-line tool.

``httpx/__init__.py`` imports ``httpx._main`` (the ``httpx`` CLI) whenever
click, rich and pygments are installed, as they are wherever the operator CLI
is. That would put rich (and several MB) into the daemon, against DESIGN.md.
A ``None`` in ``sys.modules`` makes that one import fail, and httpx falls back
to its own stub. Import httpx in the agent only through this module.
"""

from __future__ import annotations

import sys

if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx

__all__ = ["httpx"]
