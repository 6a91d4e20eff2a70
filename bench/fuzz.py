"""``make fuzz``: the hostile-input tests at Hypothesis' "fuzz" profile, then how many
inputs each parser was given and how many schemathesis cases were sent.

    python bench/fuzz.py [--examples 5000] [--api-examples 100] [--minutes 60] [--ci]

``--examples`` is per property test, ``--api-examples`` per API operation (each sent as
six callers); ``--minutes`` bounds the whole run (the tests are stopped past it and
the run fails). ``--ci`` runs the same tests at the bounded "ci" profile instead, which
is what the README's CI column counts. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_parsers_property.py",
    "tests/test_device_door_property.py",
    "tests/test_api_fuzz.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--api-examples", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--ci", action="store_true", help="the bounded CI profile instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tally = Path(tmp) / "tally.json"
        env = {
            **os.environ,
            "HYPOTHESIS_PROFILE": "ci" if args.ci else "fuzz",
            "EDGEFLEET_FUZZ_EXAMPLES": str(args.examples),
            "EDGEFLEET_FUZZ_API_EXAMPLES": str(args.api_examples),
            "EDGEFLEET_FUZZ_TALLY": str(tally),
        }
        # Per-test timeouts off (pyproject's 300 s is for CI's bounded runs): --minutes bounds.
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=0"]
        command = [*pytest, *TESTS]
        started = time.monotonic()
        try:
            status = subprocess.run(
                command, cwd=ROOT, env=env, timeout=args.minutes * 60
            ).returncode
        except subprocess.TimeoutExpired:
            print(f"fuzz: stopped after {args.minutes} minutes", file=sys.stderr)
            status = 1
        took = time.monotonic() - started
        counts = json.loads(tally.read_text()) if tally.exists() else {}
    profile = "ci" if args.ci else f"fuzz ({args.examples}/test, {args.api_examples}/operation)"
    print(f"\nInputs tried, profile {profile}, in {took / 60:.1f} min:")
    width = max((len(k) for k in counts), default=10)
    for name, n in sorted(counts.items()):
        print(f"  {name:<{width}}  {n:>9,}")
    print("result:", "no failure found" if status == 0 else f"FAILED (pytest exit {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
