"""Which simulated device does what: the fractions of ``--offline`` etc. turned into
exact counts, then shuffled with ``--seed`` so the same flags give the same fleet."""

from __future__ import annotations

import random

from edgefleet.simulate.config import Mix

PLAIN = "plain"
KINDS = ("offline", "flapping", "slow", "uploading", "failing_updates", PLAIN)


def assign(devices: int, mix: Mix, seed: int) -> list[str]:
    """One behaviour per device: ``round(fraction * devices)`` of each, plain for the rest."""
    kinds: list[str] = []
    for name, fraction in mix.items():
        count = min(round(fraction * devices), devices - len(kinds))
        kinds.extend([name] * count)
    kinds.extend([PLAIN] * (devices - len(kinds)))
    random.Random(seed).shuffle(kinds)
    return kinds
