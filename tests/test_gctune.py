"""The garbage collector's tuning for served processes (``edgefleet.gctune``), checked in
a child process so the test runner's own collector is left alone."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.processes import ControllerProcess, wait_for

FULL_COUNT = re.compile(r'^edgefleet_gc_pause_seconds_count\{generation="2"\} (\S+)$', re.M)

CHILD = r"""
import gc, json
from edgefleet import gctune

pauses = gctune.Pauses()
before = gc.get_freeze_count()
gctune.tune()
frozen = gc.get_freeze_count()
young = [[i] for i in range(gctune.YOUNG_THRESHOLD // 2)]  # lists are tracked
seen = pauses.drain()
after_half = len(seen)
young += [[i] for i in range(gctune.YOUNG_THRESHOLD)]
seen += pauses.drain()
print(json.dumps({
    "before": before, "frozen": frozen, "threshold": gc.get_threshold(),
    "after_half": after_half, "seen": seen,
}))
"""


def run_child() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    from edgefleet import gctune

    got = run_child()
    assert got["before"] == 0 and got["frozen"] > 1000, "start-up objects not frozen"
    assert got["threshold"] == [gctune.YOUNG_THRESHOLD, *gctune.OLDER_THRESHOLDS]
    # tune() collects once itself (generation 2); half a threshold of new objects then
    # triggers nothing, and 1.5 thresholds trigger a young collection.
    assert [gen for gen, _ in got["seen"][: got["after_half"]]] == [2]
    later = got["seen"][got["after_half"] :]
    assert later and all(gen == 0 for gen, _ in later)
    assert all(0 <= seconds < 5 for _, seconds in got["seen"])


def test_a_served_controller_reports_its_collections_in_metrics(tmp_path: Path) -> None:
    """Served workers tune their collector and put each collection's length in
    ``/metrics``, the full one of start-up first: what an operator watches when latency
    spikes for no visible reason."""
    ctl = ControllerProcess(tmp_path / "ctl", workers=1).start()
    try:
        with httpx.Client(
            base_url=ctl.url,
            verify=ssl.create_default_context(cafile=ctl.ca),
            headers={"Authorization": f"Bearer {ctl.admin_token}"},
        ) as client:

            def counted() -> float | None:
                found = FULL_COUNT.findall(client.get("/metrics").text)
                return float(found[0]) if found else None

            assert wait_for(counted, 30, "the start-up collection in /metrics") >= 1
    finally:
        ctl.stop()
