"""Drift statistics between two histograms over the same bins, in pure Python.

The controller has no NumPy and merges device histograms (a sum of counts per bin) before
scoring them, so every function here takes two sequences of counts (ints or floats, one
per bin, same bins in the same order) and returns a float:

``psi``  Population Stability Index, ``sum((a - e) * ln(a / e))`` over the bins' shares,
         natural log, in [0, inf). The usual reading: < 0.1 stable, 0.1-0.25 a moderate
         shift, > 0.25 a major one. A share of 0 makes the log infinite, so every share
         is raised to at least ``eps`` (default ``PSI_EPSILON`` = 1e-4) before the sum,
         without renormalising: an empty bin on one side and a share ``s`` on the other
         adds about ``s * ln(s / eps)``, a large but finite term.
``ks``   Kolmogorov-Smirnov statistic on binned data: the largest absolute difference
         between the two cumulative shares over the bins, in [0, 1]. Binning can only
         hide differences inside a bin, so it is at most the KS of the raw samples.
         No epsilon: empty bins are fine.
``js``   Jensen-Shannon divergence in bits (log base 2), in [0, 1]: 0 for identical
         shares, 1 for histograms with no bin in common. Symmetric. No epsilon: a term
         with a share of 0 is 0 (``0 * log 0 = 0``). SciPy's ``jensenshannon`` returns
         the distance, the square root of this.

Two histograms that are not comparable (different lengths, a negative or non-finite
count, an empty side) are a ConfigError naming the problem: a score of such data would
be a number nobody can act on.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from edgefleet.errors import ConfigError

PSI_EPSILON = 1e-4
"""The smallest share a bin takes in the PSI (see the module's docstring)."""

MIN_SAMPLES = 100
"""A histogram scores only with at least this many samples in the window; fewer give
PSI values that swing past 0.25 on noise alone. The runner's sketch and the controller's
merged windows both use it."""

Counts = Sequence[float]


def shares(counts: Counts, what: str = "histogram") -> list[float]:
    """Each bin's share of the total; the checks every statistic relies on."""
    total = 0.0
    for i, c in enumerate(counts):
        if not isinstance(c, numbers.Real) or isinstance(c, bool) or not math.isfinite(c):
            raise ConfigError(f"{what}: bin {i} holds {c!r}, not a finite number of samples")
        if c < 0:
            raise ConfigError(f"{what}: bin {i} holds {c}, a negative number of samples")
        total += c
    if total <= 0:
        raise ConfigError(f"{what}: no samples in any bin; a drift score needs at least one")
    return [c / total for c in counts]


def _pair(expected: Counts, actual: Counts) -> tuple[list[float], list[float]]:
    if len(expected) != len(actual):
        raise ConfigError(
            f"comparing histograms: the reference has {len(expected)} bins and the live one "
            f"{len(actual)}; both must use the reference's bin edges"
        )
    if not expected:
        raise ConfigError("comparing histograms: no bins")
    return shares(expected, "reference histogram"), shares(actual, "live histogram")


def psi(expected: Counts, actual: Counts, eps: float = PSI_EPSILON) -> float:
    """Population Stability Index of ``actual`` against ``expected`` (natural log)."""
    if not eps > 0:
        raise ConfigError(f"psi: eps must be positive, not {eps}")
    e_shares, a_shares = _pair(expected, actual)
    total = 0.0
    for e, a in zip(e_shares, a_shares, strict=True):
        e, a = max(e, eps), max(a, eps)
        total += (a - e) * math.log(a / e)
    return total


def ks(expected: Counts, actual: Counts) -> float:
    """Largest gap between the two cumulative shares over the common bins."""
    e_shares, a_shares = _pair(expected, actual)
    gap = 0.0
    e_cdf = a_cdf = 0.0
    for e, a in zip(e_shares, a_shares, strict=True):
        e_cdf += e
        a_cdf += a
        gap = max(gap, abs(e_cdf - a_cdf))
    return min(gap, 1.0)  # rounding of the running sums must not step past the bound


def js(expected: Counts, actual: Counts) -> float:
    """Jensen-Shannon divergence in bits: 0 identical, 1 disjoint."""
    e_shares, a_shares = _pair(expected, actual)
    total = 0.0
    for e, a in zip(e_shares, a_shares, strict=True):
        m = (e + a) / 2
        if e > 0:
            total += e * math.log2(e / m)
        if a > 0:
            total += a * math.log2(a / m)
    return min(max(total / 2, 0.0), 1.0)


def scores(expected: Counts, actual: Counts) -> dict[str, float]:
    """All three, as status reports and the fleet view carry them."""
    return {"psi": psi(expected, actual), "ks": ks(expected, actual), "js": js(expected, actual)}
