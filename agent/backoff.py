"""How long to wait before trying again.

Exponential backoff with full jitter (AWS architecture blog, "Exponential
Backoff and Jitter"): thousands of devices that lost the controller at the
same moment must not come back at the same moment. A server's Retry-After
wins over the schedule, because under overload the controller knows best.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER_S = 3600.0
"""A Retry-After beyond an hour is treated as an hour: a typo on the server must
not silence a device for days."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date.

    Returns None when the header is absent or unreadable, so the caller falls
    back to its own schedule.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - current), MAX_RETRY_AFTER_S)


class Backoff:
    """Delays for consecutive failures: uniform(0, min(cap, base * 2**n)), at least ``floor``."""

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 60.0,
        floor: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.floor = min(floor, cap)
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        """The wait before the next try; a server's Retry-After overrides the schedule.

        Retry-After gets up to 10% jitter on top (never less than asked), so a
        fleet told "come back in 30 s" does not return in one burst.
        """
        self.attempt += 1
        if retry_after is not None:
            return retry_after + self._rng.uniform(0, 0.1 * retry_after)
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt - 1, 32))
        return max(self.floor, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.attempt = 0


def jittered(interval: float, rng: random.Random | None = None, spread: float = 0.1) -> float:
    """The controller's interval with +-10% jitter, never under one second (no busy loop)."""
    r = rng or random
    return max(1.0, interval * (1 + r.uniform(-spread, spread)))
