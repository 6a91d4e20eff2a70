"""How times, durations and sizes read on a page."""

from __future__ import annotations

from datetime import UTC, datetime

from edgefleet.readable import duration


def _parse(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ago(value: str | datetime | None, now: datetime | None = None) -> str:
    when_ = _parse(value)
    if when_ is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - when_).total_seconds()
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def when(value: str | datetime | None) -> str:
    """A UTC time as people write it; the page's title attribute carries the full one."""
    parsed = _parse(value)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if parsed else "-"


def size(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
