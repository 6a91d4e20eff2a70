"""Hypothesis profiles for the hostile-input tests, and a tally of the inputs they tried.

``HYPOTHESIS_PROFILE`` picks the profile: ``ci`` (the default: a bounded, reproducible
run that CI can afford) or ``fuzz`` (``make fuzz``: many more inputs, random, for as
long as its bound allows). Each property test calls :func:`tried` once per input with
the name of the parser; with ``EDGEFLEET_FUZZ_TALLY`` set to a file, the counts are
added to that JSON file when the test process ends (``bench/fuzz_report.py`` prints it).
"""

from __future__ import annotations

import atexit
import json
import os
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", "5000")),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(PROFILE)

API_EXAMPLES = int(
    os.environ.get("EDGEFLEET_FUZZ_API_EXAMPLES", "100") if PROFILE == "fuzz" else "15"
)
"""Schemathesis examples per API operation (each sent as six callers): few in CI."""

_tally: Counter[str] = Counter()


def tried(parser: str) -> None:
    """Count one input given to ``parser``."""
    _tally[parser] += 1


def _save() -> None:
    target = os.environ.get("EDGEFLEET_FUZZ_TALLY")
    if not target or not _tally:
        return
    path = Path(target)
    saved = Counter(json.loads(path.read_text())) if path.exists() else Counter()
    saved.update(_tally)
    path.write_text(json.dumps(dict(sorted(saved.items())), indent=1))


atexit.register(_save)
