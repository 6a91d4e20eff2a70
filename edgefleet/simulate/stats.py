"""What the run measured: every request's latency by endpoint, errors by kind, load the
controller shed (429/503 with Retry-After), and the same per time bucket for the series.

Latencies are kept whole (an ``array`` of doubles, 8 bytes each: 20,000 devices at a
30 s interval for 10 minutes are under a million samples), so the percentiles are
nearest-rank over what was really measured, not estimated from a histogram.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

from edgefleet.percentile import percentile


@dataclass
class Bucket:
    """One time step of the series."""

    latencies: array = field(default_factory=lambda: array("d"))
    by_endpoint: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    shed: int = 0


@dataclass
class Window:
    """The same counts over one stretch of the run (the storm, from the fleet's return
    until every device has reported): latencies, errors by kind, shed load by endpoint,
    and the Retry-After values the controller sent."""

    opened: float
    closed: float | None = None
    latencies: array = field(default_factory=lambda: array("d"))
    errors: Counter[str] = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)
    shed: Counter[str] = field(default_factory=Counter)
    retry_after: array = field(default_factory=lambda: array("d"))


class Recorder:
    """Counts and latencies, in total and per bucket of ``bucket`` seconds from ``start``
    (``time.monotonic``)."""

    def __init__(self, bucket: float, start: float | None = None) -> None:
        self.bucket = bucket
        self.start = time.monotonic() if start is None else start
        self.latencies: dict[str, array] = {}
        self.errors: Counter[str] = Counter()
        """By kind: ``http 500``, ``timeout``, ``connection``, ``bad answer``."""
        self.errors_by_endpoint: Counter[str] = Counter()
        self.shed: Counter[str] = Counter()
        """429/503 with Retry-After, by endpoint: retried, not errors."""
        self.pool_wait = array("d")
        """Seconds each answered request waited for a free connection of the pool: when
        this grows, the pool (``--connections``) or the controller is the bottleneck."""
        self.unsent = 0
        """Requests still waiting for the pool when the run ended, dropped unsent: a
        backlog here means the controller (or the pool) could not keep up."""
        self.buckets: dict[int, Bucket] = {}
        self.first_error: dict[str, str] = {}
        """The first message of each error kind, for the operator."""
        self.resent = 0
        """Requests sent again because their kept-alive connection had been closed."""
        self.window: Window | None = None
        """Open while the storm lasts: what is recorded goes here too."""

    def _bucket(self, now: float) -> Bucket:
        index = int((now - self.start) / self.bucket)
        found = self.buckets.get(index)
        if found is None:
            found = self.buckets[index] = Bucket()
        return found

    def ok(self, endpoint: str, seconds: float, now: float | None = None) -> None:
        samples = self.latencies.get(endpoint)
        if samples is None:
            samples = self.latencies[endpoint] = array("d")
        samples.append(seconds)
        b = self._bucket(time.monotonic() if now is None else now)
        b.latencies.append(seconds)
        b.by_endpoint[endpoint] += 1
        if self.window is not None and self.window.closed is None:
            self.window.latencies.append(seconds)

    def error(self, endpoint: str, kind: str, detail: str = "") -> None:
        self.errors[kind] += 1
        self.errors_by_endpoint[endpoint] += 1
        self.first_error.setdefault(kind, f"{endpoint}: {detail}" if detail else endpoint)
        self._bucket(time.monotonic()).errors += 1
        w = self.window
        if w is not None and w.closed is None:
            w.errors[kind] += 1
            w.first_error.setdefault(kind, f"{endpoint}: {detail}" if detail else endpoint)

    def shed_load(self, endpoint: str, retry_after: float | None = None) -> None:
        self.shed[endpoint] += 1
        self._bucket(time.monotonic()).shed += 1
        w = self.window
        if w is not None and w.closed is None:
            w.shed[endpoint] += 1
            if retry_after is not None:
                w.retry_after.append(retry_after)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentiles_ms(samples: array | list[float]) -> dict[str, float | None]:
    """p50/p95/p99 and max in milliseconds; None without samples."""
    if not len(samples):
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples)
    return {
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p95_ms": round(percentile(ordered, 95) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }
