"""Drift statistics (``edgefleet.drift.stats``) against answers computed another way:
SciPy's Jensen-Shannon distance, cumulative shares with NumPy for KS, the PSI formula
with NumPy, and values worked out by hand. The controller scores fleet histograms with
these functions, so a wrong constant here would mislabel every device's drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

import tests.fuzz_settings  # noqa: F401  (the bounded, reproducible Hypothesis profile)
from edgefleet.drift import stats
from edgefleet.errors import ConfigError

EDGES = np.linspace(-4, 4, 17)


def binned(samples: np.ndarray) -> list[int]:
    """Counts over fixed edges with open outer bins, as a reference stores them."""
    inner = np.histogram(np.clip(samples, EDGES[0], EDGES[-1]), bins=EDGES)[0]
    return [int(c) for c in inner]


def numpy_psi(e: np.ndarray, a: np.ndarray, eps: float = stats.PSI_EPSILON) -> float:
    p = np.maximum(e / e.sum(), eps)
    q = np.maximum(a / a.sum(), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def numpy_ks(e: np.ndarray, a: np.ndarray) -> float:
    return float(np.max(np.abs(np.cumsum(e) / e.sum() - np.cumsum(a) / a.sum())))


def scipy_js(e: np.ndarray, a: np.ndarray) -> float:
    return float(jensenshannon(e, a, base=2)) ** 2


def normal(shift: float, n: int = 20_000, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, n)


def test_normal_against_shifted_normal_matches_independent_computations() -> None:
    ref, live = binned(normal(0.0)), binned(normal(0.5, seed=2))
    e, a = np.array(ref, float), np.array(live, float)
    assert stats.psi(ref, live) == pytest.approx(numpy_psi(e, a), rel=1e-12)
    assert stats.ks(ref, live) == pytest.approx(numpy_ks(e, a), rel=1e-12)
    assert stats.js(ref, live) == pytest.approx(scipy_js(e, a), rel=1e-9)
    # Half a standard deviation is a major shift by the usual PSI reading; the binned
    # KS sits just under the raw samples' KS (binning hides only moves inside a bin).
    assert stats.psi(ref, live) > 0.25
    raw = ks_2samp(normal(0.0), normal(0.5, seed=2)).statistic
    assert stats.ks(ref, live) <= raw + 1e-12
    assert stats.ks(ref, live) == pytest.approx(raw, abs=0.02)


def test_two_samples_of_one_distribution_score_as_stable() -> None:
    ref, live = binned(normal(0.0)), binned(normal(0.0, seed=3))
    assert stats.psi(ref, live) < 0.01
    assert stats.ks(ref, live) < 0.02
    assert stats.js(ref, live) < 0.001


def test_identical_histograms_score_zero_whatever_their_scale() -> None:
    ref = binned(normal(0.0))
    doubled = [2 * c for c in ref]
    assert stats.psi(ref, doubled) == pytest.approx(0.0, abs=1e-15)
    assert stats.ks(ref, doubled) == pytest.approx(0.0, abs=1e-15)
    assert stats.js(ref, doubled) == pytest.approx(0.0, abs=1e-15)


def test_values_worked_out_by_hand() -> None:
    # PSI of [.5, .5] -> [.25, .75]: -.25 ln(.5) + .25 ln(1.5) = .25 ln 3.
    assert stats.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(3), rel=1e-12)
    assert stats.ks([50, 50], [25, 75]) == pytest.approx(0.25)
    # JS of [1, 0] and [.5, .5] in bits: (1 * log2(4/3) + .5 log2(2/3) + .5 log2(2)) / 2.
    hand = (math.log2(1 / 0.75) + 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) / 2
    assert stats.js([10, 0], [5, 5]) == pytest.approx(hand, rel=1e-12)


def test_disjoint_histograms_reach_the_bounds() -> None:
    ref, live = [10, 20, 0, 0], [0, 0, 5, 5]
    assert stats.js(ref, live) == pytest.approx(1.0)
    assert stats.ks(ref, live) == pytest.approx(1.0)
    e, a = np.array(ref, float), np.array(live, float)
    assert stats.psi(ref, live) == pytest.approx(numpy_psi(e, a), rel=1e-12)
    assert stats.psi(ref, live) > 10  # finite, thanks to the epsilon, and far past 0.25


def test_empty_bins_use_the_documented_epsilon() -> None:
    ref = [0, 30, 40, 30, 0]
    live = [10, 25, 30, 25, 10]
    e, a = np.array(ref, float), np.array(live, float)
    assert stats.psi(ref, live) == pytest.approx(numpy_psi(e, a), rel=1e-12)
    assert stats.psi(ref, live, eps=1e-3) == pytest.approx(numpy_psi(e, a, 1e-3), rel=1e-12)
    assert stats.js(ref, live) == pytest.approx(scipy_js(e, a), rel=1e-9)
    assert stats.ks(ref, live) == pytest.approx(numpy_ks(e, a), rel=1e-12)


def test_numpy_counts_are_accepted_as_the_sketch_hands_them() -> None:
    ref = np.array([3, 4, 5], dtype=np.uint32)
    assert stats.scores(list(ref), list(ref)) == {"psi": 0.0, "ks": 0.0, "js": 0.0}


counts = st.lists(st.integers(0, 1000), min_size=1, max_size=20).filter(lambda c: sum(c) > 0)


@given(st.data())
def test_properties_symmetry_bounds_and_agreement(data: st.DataObject) -> None:
    ref = data.draw(counts)
    live = data.draw(
        st.lists(st.integers(0, 1000), min_size=len(ref), max_size=len(ref)).filter(
            lambda c: sum(c) > 0
        )
    )
    e, a = np.array(ref, float), np.array(live, float)
    j = stats.js(ref, live)
    assert 0.0 <= j <= 1.0
    assert j == pytest.approx(stats.js(live, ref), abs=1e-12)
    assert j == pytest.approx(scipy_js(e, a), abs=1e-9)
    k = stats.ks(ref, live)
    assert 0.0 <= k <= 1.0 and k == pytest.approx(stats.ks(live, ref), abs=1e-12)
    assert k == pytest.approx(numpy_ks(e, a), abs=1e-12)
    p = stats.psi(ref, live)
    assert p >= 0.0 and p == pytest.approx(numpy_psi(e, a), rel=1e-9, abs=1e-12)
    assert stats.psi(ref, ref) == 0.0 and stats.js(ref, ref) == 0.0


@pytest.mark.parametrize(
    ("ref", "live", "words"),
    [
        ([1, 2, 3], [1, 2], "the reference has 3 bins and the live one 2"),
        ([], [], "no bins"),
        ([0, 0], [1, 1], "reference histogram: no samples"),
        ([1, 1], [0, 0], "live histogram: no samples"),
        ([1, -1], [1, 1], "bin 1 holds -1, a negative number"),
        ([1, 1], [1, float("nan")], "bin 1 holds nan"),
        ([1, 1], [1, "3"], "bin 1 holds '3'"),
    ],
)
def test_histograms_that_cannot_be_compared_are_refused_by_name(
    ref: list, live: list, words: str
) -> None:
    for fn in (stats.psi, stats.ks, stats.js):
        with pytest.raises(ConfigError, match=words):
            fn(ref, live)


def test_psi_refuses_a_non_positive_epsilon() -> None:
    with pytest.raises(ConfigError, match="eps must be positive"):
        stats.psi([1, 1], [1, 1], eps=0)
