"""A reconnect storm against a real controller process: a few hundred simulated devices
fall silent, come back at the same instant on new TLS connections, and meet a
controller whose in-flight cap is small enough that it must shed. It sheds with 503
and Retry-After (counted, waited out with jitter, retried), nothing times out, every
device has reported again within three intervals, and the controller still answers.

And the Guard's Retry-After itself: 1 for a lone refusal, spread (jittered) over more
seconds the more a worker sheds, never past its maximum."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edgefleet.controller.guard import Guard
from edgefleet.controller.metrics import Metrics
from tests.support.processes import EDGEFLEET, ControllerProcess

DEVICES = 300
INTERVAL = 5.0


def test_a_fleet_back_at_once_is_shed_with_retry_after_and_reports_within_three_intervals(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ctl = ControllerProcess(
        data,
        workers=1,
        max_inflight_requests=8,
        enrol_rate_per_second=0,
        token_rate_per_second=0,
    ).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env.update(
            EDGEFLEET_URL=ctl.url,
            EDGEFLEET_TOKEN=ctl.admin_token,
            EDGEFLEET_CA_FILE=ctl.ca,
            EDGEFLEET_CLI_CONFIG="/nonexistent/cli.yaml",
        )
        report = tmp_path / "report.json"
        run = subprocess.run(
            [
                *EDGEFLEET,
                "simulate",
                *("--devices", str(DEVICES), "--interval", str(INTERVAL), "--duration", "25"),
                *("--outage-at", "4", "--outage-for", "3", "--offline", "0.1"),
                *("--enrol-concurrency", "32", "--site", "storm", "--seed", "3"),
                *("--controller-pid", str(ctl.proc.pid), "--report", str(report)),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        with ctl.client() as c:
            assert c.get("/sites").status_code == 200  # still up, still serving operators
    finally:
        ctl.close()

    doc = json.loads(report.read_text())
    storm = doc["storm"]
    assert doc["error_count"] == 0, doc["first_errors"]
    assert storm["devices_online"] == DEVICES - 30  # the offline tenth is not expected
    assert storm["reported"] == storm["devices_online"] and storm["missing"] == 0
    assert storm["within_budget"], storm["all_reported_after_s"]
    assert 0 < storm["all_reported_after_s"] <= 3 * INTERVAL == storm["budget_s"]
    # Shed, not timed out: 503s with a Retry-After, and no errors of any kind.
    assert storm["shed"] > 0 and storm["errors"] == 0, storm
    assert storm["retry_after_s"]["min"] >= 1
    # Back on connections of their own: a handshake per returning device at least.
    assert storm["connections"]["opened"] >= storm["devices_online"]
    assert storm["requests"] > 0 and storm["latency"]["p99_ms"] > 0
    ctl_figures = storm["controller"]
    assert ctl_figures["alive_at_end"] and ctl_figures["answering_at_end"]
    assert ctl_figures["processes_after"] == ctl_figures["processes_before"]
    assert "storm: outage at 4 s for 3 s; all 270 online devices reported again" in " ".join(
        run.stdout.split()
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _shed(
    guard: Guard, clock: _Clock, requests: int, served: int = 0, each: float = 0.0
) -> list[int]:
    """Serve ``served`` requests of ``each`` seconds, then send ``requests`` more while
    the app holds one in flight (the guard's cap is 1): the Retry-After of every one it
    sheds."""
    started, release = asyncio.Event(), asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        clock.now += each
        if scope["path"] == "/held":
            started.set()
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard.app = app
    answers: list[dict[str, Any]] = []

    async def one(path: str = "/x") -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answers.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "headers": []}
        await guard(scope, receive, send)

    async def storm() -> None:
        for _ in range(served):
            await one()
        held = asyncio.create_task(one("/held"))
        await started.wait()  # one in flight: every other request is over the cap
        for _ in range(requests):
            await one()
        release.set()
        await held

    asyncio.run(storm())
    return [int(dict(a["headers"])[b"retry-after"]) for a in answers if a["status"] == 503]


def test_retry_after_is_one_for_a_lone_refusal_and_spreads_with_the_load() -> None:
    clock = _Clock()
    guard = Guard(
        None, Metrics(lambda: {}), 1024, 1, retry_after_max=20, rng=random.Random(1), clock=clock
    )
    assert _shed(guard, clock, 1) == [1]

    # 200 shed within a second by a worker that has measured little yet (it guesses
    # 0.1 s a request, 10 a second at a cap of 1): spread over about 20 s, the maximum,
    # about as many in each second, nothing past it.
    clock.now += 5
    waits = _shed(guard, clock, 200)
    assert len(waits) == 200 and waits[0] == 1 and 15 <= max(waits) <= 20
    late = Counter(waits[100:])
    assert len(late) >= 12 and max(late.values()) <= 20

    # The next second still remembers the last one's load; a quiet second forgets it.
    clock.now += 1.5
    assert max(_shed(guard, clock, 30)) > 1
    clock.now += 3
    assert _shed(guard, clock, 1) == [1]

    # A worker serving a request in 1 ms (1,000 a second) fits 200 in a second: 1.
    clock.now += 3
    assert set(_shed(guard, clock, 200, served=300, each=0.001)) == {1}
    # At 20 ms a request (50 a second), 200 shed are spread over 1 + 199 // 50 = 4 s.
    clock.now += 3
    assert set(_shed(guard, clock, 200, served=300, each=0.02)) == {1, 2, 3, 4}


if sys.platform != "linux":  # the controller's figures come from /proc
    pytestmark = pytest.mark.skip(reason="the simulator reads the controller's figures from /proc")
