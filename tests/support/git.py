"""Reading the fleet repositories in tests with the real ``git`` command."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    """``git --git-dir=REPO ARGS...``'s output; a failure fails the test."""
    return subprocess.run(
        ["git", f"--git-dir={repo}", *args], capture_output=True, text=True, check=True
    ).stdout
