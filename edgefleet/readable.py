"""Durations as people read them, the same in the CLI and the console."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """0s, 45s, 3m, 2h5m, 3d4h; "-" for none."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    big, small, unit, sub = (s // 3600, s % 3600 // 60, "h", "m")
    if s >= 86400:
        big, small, unit, sub = (s // 86400, s % 86400 // 3600, "d", "h")
    return f"{big}{unit}{small}{sub}" if small else f"{big}{unit}"
