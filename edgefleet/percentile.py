"""The one percentile everybody computes: the agent's latency check and the p95 it
reports, the rollout gates, the CLI's evidence tables."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(samples: Iterable[float], pct: float) -> float:
    """Nearest rank: a value that was really measured, not an interpolation between two.
    ValueError without samples."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("a percentile of no samples")
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]
