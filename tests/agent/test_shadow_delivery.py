"""The daemon's side of shadow windows: what the runners stored reaches the controller
in the status report once its window has ended, oldest first, once, whatever happens in
between (a refused report, an agent restart). The controller here is the fake: what is
under test is the agent's delivery, not the controller's storage."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.results import RESULTS_FOLDER
from edgefleet.agent.shadow_windows import SETTLE_S, ShadowWindows
from edgefleet.wire import MAX_SHADOW_WINDOWS
from tests.agent.conftest import AgentThread, wait_until
from tests.agent.fakecontroller import FakeController


def _window(start: int, compared: int, seconds: int = 60) -> dict:
    return {
        "key": "rollout-2",
        "model": "m",
        "active_digest": "sha256:" + "a" * 64,
        "candidate_digest": "sha256:" + "c" * 64,
        "start": start,
        "seconds": seconds,
        "compared": compared,
        "skipped": 0,
        "errors": 0,
        "top1_total": compared,
        "top1_agree": compared,
        "abs_diff_sum": 0.0,
        "abs_diff_max": 0.0,
        "active_latency": {"p50_ms": 0.1, "p95_ms": 0.2},
        "candidate_latency": {"p50_ms": 0.1, "p95_ms": 0.3},
    }


def _put(state_dir: Path, *windows: dict) -> None:
    store = ShadowWindows(state_dir / RESULTS_FOLDER)
    for w in windows:
        store.put(w)
    store.close()


def _reported(fake: FakeController) -> list[tuple[int, int]]:
    """(start, compared) of every window in every report the controller accepted."""
    with fake.lock:
        reports = [r for d in fake.devices.values() for r in d.statuses]
    return [(w.start, w.compared) for r in reports for w in r.shadow]


def _reports(fake: FakeController) -> int:
    with fake.lock:
        return sum(len(d.statuses) for d in fake.devices.values())


def test_windows_reach_the_controller_once_oldest_first_across_failures_and_restarts(
    fake: FakeController, run_agent: Callable[..., AgentThread], state_dir: Path
) -> None:
    fake.interval_seconds = 1
    ended = int(time.time() - SETTLE_S) // 60 * 60 - 60  # ended, and settled
    backlog = [_window(ended - 60 * i, 10 + i) for i in range(MAX_SHADOW_WINDOWS + 4)]
    running = _window(int(time.time()) // 3600 * 3600, 5, seconds=3600)  # not ended
    running["key"] = "parent"  # another comparison: never merged with a backlog window
    _put(state_dir, *backlog, running)

    agent = run_agent()
    wait_until(lambda: len(_reported(fake)) == len(backlog), 20, "the backlog delivered")
    first = _reported(fake)[:MAX_SHADOW_WINDOWS]
    assert first == sorted(first) and first[0][0] == backlog[-1]["start"]  # oldest first
    with fake.lock:
        assert max(len(r.shadow) for d in fake.devices.values() for r in d.statuses) == 16

    # a report the controller refuses delivers nothing: the window goes in the next one
    fake.fail_next("POST", "/devices/", 503, count=1)
    _put(state_dir, _window(ended + 1, 99, seconds=1))
    wait_until(lambda: (ended + 1, 99) in _reported(fake), 20, "the refused window resent")
    agent.stop()

    # stored while the agent was down (a runner keeps comparing), delivered after it restarts
    _put(state_dir, _window(ended + 2, 7, seconds=1))
    seen = _reports(fake)
    run_agent()
    wait_until(lambda: _reports(fake) >= seen + 3, 20, "three reports after the restart")
    reported = _reported(fake)
    assert sorted(reported) == sorted(
        {(w["start"], w["compared"]) for w in backlog} | {(ended + 1, 99), (ended + 2, 7)}
    )  # each once, and the open window not before its end
    assert len(reported) == len(set(reported))
    store = ShadowWindows(state_dir / RESULTS_FOLDER)
    assert store.undelivered() == 1  # the open window
    store.close()
