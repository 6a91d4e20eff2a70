"""Per-site maintenance windows, in the site's own time zone: ``Mon-Fri 01:00-05:00``,
``Sat,Sun 00:00-24:00``, ``daily 22:00-06:00`` (a window may cross midnight; it then
belongs to the day it starts on). A site without windows may be updated at any time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edgefleet.errors import BadRequest

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(\S+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    days: frozenset[int]
    """Weekdays it starts on, Monday = 0."""
    start: int
    """Minutes after local midnight."""
    end: int
    """Minutes after the start day's midnight; past 1440 when it crosses midnight."""

    def contains(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        if local.weekday() in self.days and self.start <= minute < self.end:
            return True
        yesterday = (local.weekday() - 1) % 7
        return yesterday in self.days and minute + 1440 < self.end


def parse_window(text: str) -> Window:
    found = _WINDOW.match(text)
    if not found:
        raise BadRequest(
            f"maintenance window {text!r} must read DAYS HH:MM-HH:MM, e.g. 'Mon-Fri 01:00-05:00'",
            code="bad_window",
        )
    days_text, h1, m1, h2, m2 = found.groups()
    start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
    if int(m1) > 59 or int(m2) > 59 or start >= 1440 or end > 1440 or start == end:
        raise BadRequest(
            f"maintenance window {text!r}: times run 00:00 to 24:00", code="bad_window"
        )
    if end < start:
        end += 1440
    return Window(_days(days_text, text), start, end)


def _days(spec: str, text: str) -> frozenset[int]:
    if spec.lower() in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise BadRequest(
                f"maintenance window {text!r}: days are Mon..Sun, ranges (Mon-Fri), lists "
                "(Sat,Sun) or 'daily'",
                code="bad_window",
            )
        a = DAYS.index(first)
        b = DAYS.index(last) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadRequest(
            f"unknown time zone {name!r} (e.g. Europe/Paris)", code="bad_timezone"
        ) from exc


def is_open(windows: list[Window], tz: ZoneInfo, now: datetime) -> bool:
    """Whether a site may be updated at ``now`` (an aware time)."""
    if not windows:
        return True
    local = now.astimezone(tz)
    return any(w.contains(local) for w in windows)


def next_open(windows: list[Window], tz: ZoneInfo, now: datetime) -> datetime:
    """When the site's next window opens (``now`` if one is open): the earliest window
    start over the coming week, in the site's zone (its daylight-saving changes too)."""
    if is_open(windows, tz, now):
        return now
    local = now.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    starts = []
    for offset in range(8):
        day = midnight + timedelta(days=offset)
        for w in windows:
            if day.weekday() in w.days:
                start = (day + timedelta(minutes=w.start)).replace(tzinfo=tz)
                if start > now:
                    starts.append(start.astimezone(now.tzinfo))
    return min(starts, default=now)
