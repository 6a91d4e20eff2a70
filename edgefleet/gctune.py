"""The cyclic garbage collector tuned for a long-running server process with big caches.

With CPython's defaults (a young collection every 700 allocations), a controller worker
answering 700 requests/s with 20,000 devices cached promotes whatever is in flight at
each collection into the oldest generation, and runs a full collection of its whole heap
every 5-10 s: 100-400 ms with the GIL held, every request of the worker waiting (seen in
the 20,000-device soak as p99 spikes in one 5-second period in ten). The simulator, an
asyncio process as large, stalls the same way and counts its own pauses as latency.

``tune()`` raises the young threshold so that few objects are caught in flight, and
freezes what exists at start-up (modules, the app, its routes), which no collection
needs to walk again. Reference counting still frees everything acyclic at once; only
cycles wait longer. ``Pauses`` keeps each collection's length, for ``/metrics``.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

YOUNG_THRESHOLD = 50_000
"""Allocations (net of deallocations) between young collections: 70x the default. A
young collection then walks at most this many objects, about 1-3 ms."""
OLDER_THRESHOLDS = (20, 20)
"""Young collections per middle one, and middle ones per full collection (which CPython
also holds back until a quarter of the heap is new since the last)."""


def tune() -> None:
    """Freeze the objects of start-up and raise the thresholds; call once per process,
    after the imports and before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


class Pauses:
    """Each collection's generation and length, kept until ``drain``: the callback runs
    inside the collector, where taking a metric's lock could deadlock with the thread the
    collection interrupted, so it only appends to a bounded deque."""

    def __init__(self, keep: int = 10_000) -> None:
        self._seen: deque[tuple[int, float]] = deque(maxlen=keep)
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._seen.append((int(info["generation"]), time.perf_counter() - self._started))

    def drain(self) -> list[tuple[int, float]]:
        """The pauses since the last drain, oldest first."""
        out = []
        while self._seen:
            out.append(self._seen.popleft())
        return out

    def close(self) -> None:
        gc.callbacks.remove(self._callback)
