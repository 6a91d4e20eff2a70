"""The runner's shadow: a candidate model run on a sample of the active model's live
inputs, after the caller has its answer, and the two compared.

The caller never waits for the candidate: the server hands the call's inputs and
outputs over only once its answer is written, through a bounded queue that is never
waited on (a full queue counts the call as ``skipped``). One worker thread runs the
candidate and compares. Figures go into windows aligned on the wall clock; a window
closes on the first comparison after its end or on a timer, and is written to the
device's shadow store (:mod:`edgefleet.agent.shadow_windows`) for the daemon to
report. A candidate failure counts as ``errors``; nothing here reaches the answer.

Counts are of rows: a call answering a batch of 100 rows counts 100 compared (an
operator's "agreement" is over predictions, not over HTTP calls). The rows of a call
are its first output's leading axis when that output has two axes or more or holds one
label per row (integers or strings), else 1. Top-1 agreement reads the first output as
class scores (argmax over its last axis, when it has two values or more) or as labels.
Latencies are per call: the active model's time for the call and the candidate's.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.agent.runner.api import ShadowHealth, TensorSpec
from edgefleet.agent.runner.inputs import InputError
from edgefleet.agent.runner.model import InferenceError, Model
from edgefleet.agent.shadow_windows import ShadowWindows
from edgefleet.errors import ConfigError
from edgefleet.percentile import percentile

log = logging.getLogger("edgefleet.runner")

QUEUE_SIZE = 16
"""Sampled calls waiting for the candidate; past this they are skipped. Small: a
candidate slower than the traffic should show as skips, not as memory."""
LATENCY_SAMPLES = 2048
"""Latencies kept per window for its percentiles (a uniform sample beyond this)."""
ROLL_EVERY_MAX_S = 5.0
"""The timer closing a window after traffic stops checks this often at most."""


class ComparisonError(Exception):
    """The candidate's outputs cannot be set against the active model's (count, shape)."""


@dataclass(frozen=True)
class Comparison:
    """One call, the candidate against the active model."""

    rows: int
    top1_rows: int
    """Rows whose first output reads as class scores (0 or ``rows``)."""
    top1_agree: int
    abs_diff_mean: float
    """Over every numeric output value of the call but labels, element by element."""
    abs_diff_max: float


def rows_of(outputs: list[Any]) -> int:
    """The call's rows: its first output's leading axis when it has two axes or more or
    holds labels (one per row), else 1."""
    first = outputs[0] if outputs else None
    if isinstance(first, np.ndarray) and (first.ndim >= 2 or _labels(first)):
        return int(first.shape[0])
    return 1


def _labels(value: Any) -> bool:
    """One class label per row (integers or strings, as scikit-learn's converters give)."""
    return (
        isinstance(value, np.ndarray)
        and value.ndim == 1
        and (np.issubdtype(value.dtype, np.integer) or value.dtype.kind in "OUS")
    )


def compare(active: list[Any], candidate: list[Any]) -> Comparison:
    """Top-1 agreement over the first output and absolute differences over every numeric
    output but labels; outputs are matched by position. Raises ComparisonError."""
    if len(active) != len(candidate):
        raise ComparisonError(
            f"the candidate gives {len(candidate)} outputs, the active model {len(active)}"
        )
    rows = rows_of(active)
    diffs = []
    for i, (a, c) in enumerate(zip(active, candidate, strict=True)):
        if not (_numeric(a) and _numeric(c)) or _labels(a):
            continue  # labels, a sequence of maps (ZipMap): compared through top-1 only
        if a.shape != c.shape:
            raise ComparisonError(
                f"output {i} has shape {list(c.shape)} from the candidate, "
                f"{list(a.shape)} from the active model"
            )
        diff = np.abs(a.astype(np.float64) - c.astype(np.float64)).ravel()
        if not np.isfinite(diff).all():
            raise ComparisonError(f"output {i} holds values that are not finite")
        diffs.append(diff)
    every = np.concatenate(diffs) if diffs else np.zeros(0)
    top1_rows = top1_agree = 0
    first_a, first_c = active[0], candidate[0]
    if _labels(first_a) and _labels(first_c) and first_a.shape == first_c.shape:
        top1_rows = rows
        top1_agree = int(np.count_nonzero(first_a == first_c))
    elif _scores(first_a) and _scores(first_c) and first_a.shape[-1] >= 2:
        same = np.argmax(first_a, axis=-1) == np.argmax(first_c, axis=-1)
        if first_a.ndim >= 2:  # a row agrees where its top-1 is the same at every position
            same = same.reshape(rows, -1).all(axis=1)
        top1_rows = rows
        top1_agree = int(np.count_nonzero(same))
    return Comparison(
        rows=rows,
        top1_rows=top1_rows,
        top1_agree=top1_agree,
        abs_diff_mean=float(every.mean()) if every.size else 0.0,
        abs_diff_max=float(every.max()) if every.size else 0.0,
    )


def _scores(value: Any) -> bool:
    return _numeric(value) and not _labels(value) and value.ndim >= 1


def _numeric(value: Any) -> bool:
    return isinstance(value, np.ndarray) and (
        np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_
    )


def check_inputs(active: list[TensorSpec], candidate: list[TensorSpec]) -> None:
    """ConfigError unless the candidate takes the active model's inputs: the same names
    and element types, and no fixed dimension that differs."""
    theirs = {spec["name"]: spec for spec in candidate}
    for spec in active:
        other = theirs.pop(spec["name"], None)
        if other is None:
            raise ConfigError(f"the candidate has no input {spec['name']!r}")
        if other["type"] != spec["type"]:
            raise ConfigError(
                f"input {spec['name']!r} is {other['type']} for the candidate, "
                f"{spec['type']} for the active model"
            )
        mine, its = spec["shape"], other["shape"]
        fixed = zip(mine, its, strict=False)
        if len(mine) != len(its) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in fixed
        ):
            raise ConfigError(
                f"input {spec['name']!r} has shape {its} for the candidate, {mine} for the "
                "active model"
            )
    if theirs:
        raise ConfigError(f"the candidate needs inputs the active model lacks: {sorted(theirs)}")


@dataclass
class _Window:
    start: int
    compared: int = 0
    skipped: int = 0
    errors: int = 0
    top1_total: int = 0
    top1_agree: int = 0
    abs_diff_sum: float = 0.0
    abs_diff_max: float = 0.0
    calls: int = 0
    active_ms: list[float] = field(default_factory=list)
    candidate_ms: list[float] = field(default_factory=list)

    def add(self, c: Comparison, active_ms: float, candidate_ms: float, rng: random.Random) -> None:
        self.compared += c.rows
        self.top1_total += c.top1_rows
        self.top1_agree += c.top1_agree
        self.abs_diff_sum += c.abs_diff_mean * c.rows
        self.abs_diff_max = max(self.abs_diff_max, c.abs_diff_max)
        self.calls += 1
        if len(self.active_ms) < LATENCY_SAMPLES:
            self.active_ms.append(active_ms)
            self.candidate_ms.append(candidate_ms)
        else:  # reservoir: every call equally likely to be kept
            slot = rng.randrange(self.calls)
            if slot < LATENCY_SAMPLES:
                self.active_ms[slot], self.candidate_ms[slot] = active_ms, candidate_ms


@dataclass(frozen=True)
class _Sampled:
    when: float
    arrays: dict[str, np.ndarray]
    active: list[Any]
    active_ms: float


class Shadow:
    """A candidate beside one active model; :meth:`offer` after each answered call."""

    def __init__(
        self,
        active: Model,
        candidate: Model,
        store: ShadowWindows,
        *,
        key: str,
        active_digest: str,
        candidate_digest: str,
        sample_rate: float = 1.0,
        window_seconds: float = 300.0,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Raises ConfigError when the candidate does not take the active model's inputs."""
        check_inputs(active.inputs, candidate.inputs)
        self.active, self.candidate, self.store = active, candidate, store
        self.key = key
        self.active_digest, self.candidate_digest = active_digest, candidate_digest
        self.sample_rate = sample_rate
        self.window_seconds = max(1, int(window_seconds))
        self.clock = clock
        self.totals = {"compared": 0, "skipped": 0, "errors": 0}
        """Since this runner started, for ``/health``."""
        self._queue: queue.Queue[_Sampled | None] = queue.Queue(queue_size)
        self._windows: dict[int, _Window] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._stop = threading.Event()
        self._last_error: str | None = None
        self._threads = [
            threading.Thread(target=self._work, name="shadow", daemon=True),
            threading.Thread(target=self._roll_on_time, name="shadow-timer", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Finish the queued calls' comparisons, then store every open window (a runner
        restarted within a window writes the rest of it later, merged by the store)."""
        self._stop.set()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        with self._lock:
            windows, self._windows = list(self._windows.values()), {}
        self._keep(windows)

    def offer(
        self, arrays: dict[str, np.ndarray], outputs: dict[str, Any], active_ms: float
    ) -> None:
        """Hand a call over to the candidate, if sampled; never blocks."""
        if self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
            return
        now = self.clock()
        values = list(outputs.values())
        try:
            self._queue.put_nowait(_Sampled(now, arrays, values, active_ms))
        except queue.Full:
            rows = rows_of(values)
            with self._lock:
                self._window(now).skipped += rows
                self.totals["skipped"] += rows

    def health(self) -> ShadowHealth:
        with self._lock:
            return ShadowHealth(
                key=self.key,
                digest=self.candidate_digest,
                running=True,
                reason=self._last_error,
                **self.totals,
            )

    # -- the worker ---------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._compare(item)
            self._keep(self._closed(self.clock()))

    def _compare(self, item: _Sampled) -> None:
        rows = rows_of(item.active)
        try:
            values, candidate_ms = self.candidate.run_arrays(item.arrays)
            result = compare(item.active, list(values.values()))
        except (InputError, InferenceError, ComparisonError) as exc:
            self._error(item.when, rows, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # a comparison bug must not end the worker
            self._error(item.when, rows, f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._window(item.when).add(result, item.active_ms, candidate_ms, self._rng)
            self.totals["compared"] += result.rows

    def _error(self, when: float, rows: int, message: str) -> None:
        with self._lock:
            self._window(when).errors += rows
            self.totals["errors"] += rows
            first = message != self._last_error
            self._last_error = message
        if first:
            log.warning("shadow candidate %s failed (counted as errors): %s", self.key, message)

    def _window(self, when: float) -> _Window:
        """The open window ``when`` falls in; call with the lock held."""
        start = int(when // self.window_seconds) * self.window_seconds
        window = self._windows.get(start)
        if window is None:
            window = self._windows[start] = _Window(start)
        return window

    def _closed(self, now: float) -> list[_Window]:
        with self._lock:
            ended = [s for s in self._windows if s + self.window_seconds <= now]
            return [self._windows.pop(s) for s in sorted(ended)]

    def _roll_on_time(self) -> None:
        every = min(ROLL_EVERY_MAX_S, self.window_seconds / 10)
        while not self._stop.wait(every):
            self._keep(self._closed(self.clock()))

    def _keep(self, windows: list[_Window]) -> None:
        for window in windows:
            try:
                self.store.put(self.to_wire(window))
            except Exception as exc:  # a full disk: logged, the runner serves on
                log.error("shadow window %s of %s not stored: %s", window.start, self.key, exc)

    def to_wire(self, w: _Window) -> dict[str, Any]:
        """A ``ShadowWindow`` as JSON."""
        return {
            "key": self.key,
            "model": self.active.ref["name"],
            "active_digest": self.active_digest,
            "candidate_digest": self.candidate_digest,
            "start": w.start,
            "seconds": self.window_seconds,
            "compared": w.compared,
            "skipped": w.skipped,
            "errors": w.errors,
            "top1_total": w.top1_total,
            "top1_agree": w.top1_agree,
            "abs_diff_sum": w.abs_diff_sum,
            "abs_diff_max": w.abs_diff_max,
            "active_latency": _summary(w.active_ms),
            "candidate_latency": _summary(w.candidate_ms),
        }


def _summary(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p95_ms": None}
    return {
        "p50_ms": round(percentile(samples, 50), 3),
        "p95_ms": round(percentile(samples, 95), 3),
    }
