"""The runner's drift sketch: live inputs and outputs counted into the reference's bins,
per time window, in fixed arrays.

One ``Sketch`` per served model. ``update`` takes one inference (a batch of rows) and
adds each row to the counts of the current window: every sketched input feature, every
output, every confidence. Memory is one flat count array for the current window, a copy
for the last closed one, and the reference's edges: nothing grows with traffic.

Windows are aligned on the wall clock (``floor(t / window_seconds)``), so that windows of
different devices line up when the controller sums them. ``update`` and ``roll`` return
a window as it closes, for the runner to keep (the offline buffer) and report; only the
last one stays here. A window with no inference is never returned.

Sampling: with ``sample_rate`` r, exactly every (1/r)-th inference is counted (a credit
that grows by r per call), so the cost and the counts are deterministic.

Binning follows the reference (``searchsorted(edges, v, side="right")``): values with
``np.searchsorted``; features and confidences with one comparison against the edges
padded with +inf: ``v >= edges`` is a run of True then False, and its first False
(``argmin``) is the same index. For the features that is one call for all of them,
where a loop of 32 ``searchsorted`` calls would cost the whole per-inference budget.
A label read as the argmax of scores goes through a lookup table as wide as the scores;
a label the model answers itself through ``searchsorted`` over the reference's classes.
All of one inference's bin indices are added to the counts in one ``np.add.at``. A NaN
input counts in the lowest bin. ``scores`` uses :mod:`edgefleet.drift.stats`, the functions the
controller uses on merged counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.drift import stats
from edgefleet.drift.reference import Reference, softmax_top
from edgefleet.errors import ConfigError

MIN_SAMPLES = stats.MIN_SAMPLES
WIRE_DIGITS = 4


@dataclass(frozen=True)
class Window:
    start: float
    """Wall-clock seconds at which it opened, a multiple of ``seconds``."""
    seconds: float
    seen: int
    """Inferences in the window; ``samples`` of them were counted (the sampling rate)."""
    samples: int
    counts: np.ndarray
    """int64, laid out as ``Reference.histograms()``."""


@dataclass(frozen=True)
class _Input:
    name: str
    indices: np.ndarray
    edges: np.ndarray
    """[features, widest edges + 1], padded with +inf (never ``<=`` a value)."""
    base: np.ndarray
    """Offset of each feature's first bin in the flat counts."""


@dataclass(frozen=True)
class _Output:
    name: str
    kind: str
    base: int
    edges: np.ndarray
    """values: the bin edges; labels: the labels with their own bin, sorted, then -1."""
    table: np.ndarray
    """classes from scores: the bin of each label below the width, as an offset."""
    scores: str | None
    confidence_base: int
    confidence_edges: np.ndarray


class Sketch:
    """Windowed histograms of one model's live traffic against its reference."""

    def __init__(
        self,
        reference: Reference,
        *,
        window_seconds: float = 3600.0,
        sample_rate: float = 1.0,
        min_samples: int = MIN_SAMPLES,
        now: float | None = None,
    ) -> None:
        if not (0 < sample_rate <= 1):
            raise ConfigError(f"drift sample rate {sample_rate}: give a share in (0, 1]")
        if not (window_seconds > 0 and math.isfinite(window_seconds)):
            raise ConfigError(f"drift window {window_seconds} s: give a positive number")
        self.reference = reference
        self.digest = reference.digest()
        self.window_seconds = float(window_seconds)
        self.sample_rate = float(sample_rate)
        self.min_samples = min_samples
        self.labels = [label for label, _ in reference.histograms()]
        self._expected = [h.counts for _, h in reference.histograms()]
        sizes = [h.bins for _, h in reference.histograms()]
        self._spans = np.cumsum([0, *sizes]).tolist()
        self._inputs = self._plan_inputs()
        self._outputs = self._plan_outputs()
        total = self._spans[-1]
        self._current = np.zeros(total, dtype=np.int64)
        self._seen = 0
        self._samples = 0
        self._credit = 0.0
        self._start = self._aligned(time.time() if now is None else now)
        self.last: Window | None = None

    def _plan_inputs(self) -> list[_Input]:
        plans = []
        position = 0
        for info in self.reference.inputs:
            features = [f for f in self.reference.features if f.input == info.name]
            if not features:
                continue
            widest = max(len(f.histogram.edges) for f in features) + 1
            edges = np.full((len(features), widest), np.inf)
            for row, f in enumerate(features):
                edges[row, : len(f.histogram.edges)] = f.histogram.edges
            base = np.array(self._spans[position : position + len(features)], dtype=np.int64)
            position += len(features)
            indices = np.array([f.index for f in features], dtype=np.intp)
            plans.append(_Input(info.name, indices, edges, base))
        return plans

    def _plan_outputs(self) -> list[_Output]:
        plans = []
        position = len(self.reference.features)
        for o in self.reference.outputs:
            base = self._spans[position]
            position += 1
            confidence_base, confidence_edges = -1, np.empty(0)
            if o.confidence is not None:
                confidence_base = self._spans[position]
                confidence_edges = np.asarray([*o.confidence.edges, np.inf], dtype=np.float64)
                position += 1
            classes = o.histogram.classes
            edges = np.asarray(o.histogram.edges, dtype=np.float64)
            table = np.empty(0, dtype=np.intp)
            if o.scores == "labels":
                edges = np.asarray([*classes, -1], dtype=np.int64)
            elif o.kind == "classes":
                table = np.full(o.width, base + len(classes), dtype=np.intp)
                table[classes] = base + np.arange(len(classes))
            plans.append(
                _Output(
                    o.name, o.kind, base, edges, table, o.scores, confidence_base, confidence_edges
                )
            )
        return plans

    @property
    def nbytes(self) -> int:
        """Memory held by the counts and edges: fixed once built."""
        arrays = [self._current]
        arrays += [a for p in self._inputs for a in (p.indices, p.edges, p.base)]
        arrays += [a for p in self._outputs for a in (p.edges, p.table, p.confidence_edges)]
        if self.last is not None:
            arrays.append(self.last.counts)
        return sum(a.nbytes for a in arrays)

    def _aligned(self, now: float) -> float:
        return math.floor(now / self.window_seconds) * self.window_seconds

    def roll(self, now: float | None = None) -> Window | None:
        """Close the current window if ``now`` is past its end; the closed window when it
        held an inference, else None."""
        now = time.time() if now is None else now
        if now < self._start + self.window_seconds:
            return None
        closed = None
        if self._seen:
            closed = Window(
                self._start, self.window_seconds, self._seen, self._samples, self._current.copy()
            )
            self.last = closed
            self._current[:] = 0
            self._seen = self._samples = 0
        self._start = self._aligned(now)
        return closed

    def update(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        now: float | None = None,
    ) -> Window | None:
        """Count one inference (every row of its batch); the window it closed, if any."""
        closed = self.roll(now)
        self._seen += 1
        self._credit += self.sample_rate
        if self._credit < 1.0:
            return closed
        self._credit -= 1.0
        bins = []
        for p in self._inputs:
            values = np.asarray(inputs[p.name])
            picked = values.reshape(values.shape[0], -1)[:, p.indices]
            bins.append(((picked[:, :, None] >= p.edges).argmin(axis=2) + p.base).ravel())
        for o in self._outputs:
            bins.extend(self._output_bins(o, np.asarray(outputs[o.name])))
        np.add.at(self._current, np.concatenate(bins), 1)
        self._samples += 1
        return closed

    def _output_bins(self, o: _Output, values: np.ndarray) -> list[np.ndarray]:
        if o.kind == "values":
            return [np.searchsorted(o.edges, values.ravel(), side="right") + o.base]
        if o.scores == "labels":
            labels = values.reshape(-1)
            at = np.searchsorted(o.edges[:-1], labels)  # the -1 after them is never a label
            return [np.where(o.edges[at] == labels, at + o.base, o.base + o.edges.size - 1)]
        scores = values.reshape(values.shape[0], -1)
        top = scores.max(axis=1) if o.scores == "probabilities" else softmax_top(scores)
        confidence = (top[:, None] >= o.confidence_edges).argmin(axis=1) + o.confidence_base
        return [o.table[scores.argmax(axis=1)], confidence]

    def current(self) -> Window:
        """The open window so far (a copy)."""
        return Window(
            self._start, self.window_seconds, self._seen, self._samples, self._current.copy()
        )

    def scores(self, window: Window | None = None) -> dict[str, dict[str, float] | None]:
        """PSI, KS and JS of each histogram (features, outputs, confidences) against the
        reference, for ``window`` (default: the last closed one, else the open one); None
        for a histogram with fewer than ``min_samples`` counts."""
        window = window or self.last or self.current()
        counts = window.counts.tolist()
        out: dict[str, dict[str, float] | None] = {}
        for i, label in enumerate(self.labels):
            live = counts[self._spans[i] : self._spans[i + 1]]
            enough = sum(live) >= self.min_samples
            out[label] = stats.scores(self._expected[i], live) if enough else None
        return out

    def to_wire(self, window: Window | None = None) -> dict[str, Any]:
        """The window for a status report: its counts as one list laid out as the
        reference's histograms (the controller merges and scores them itself), and the
        worst scores of the inputs and each output's, rounded, for a glance."""
        window = window or self.last or self.current()
        scored = self.scores(window)
        features = len(self.reference.features)
        worst: dict[str, Any] = {}
        inputs = [(label, s) for label, s in list(scored.items())[:features] if s]
        if inputs:
            worst["inputs"] = {
                name: round(max(s[name] for _, s in inputs), WIRE_DIGITS)
                for name in ("psi", "ks", "js")
            }
            worst["inputs"]["feature"] = max(inputs, key=lambda item: item[1]["psi"])[0]
        for label, s in list(scored.items())[features:]:
            if s:
                worst[label] = {k: round(v, WIRE_DIGITS) for k, v in s.items()}
        return {
            "reference": self.digest,
            "start": int(window.start),
            "seconds": int(window.seconds),
            "seen": window.seen,
            "samples": window.samples,
            "counts": window.counts.tolist(),
            "scores": worst,
        }
