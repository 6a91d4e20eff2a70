"""The inference runner as the agent uses it: a real child process, real onnxruntime,
tiny models whose right answers are computed with NumPy."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.buffer import Buffer
from edgefleet.agent.results import RESULTS_DB, BufferStore
from edgefleet.agent.runner import server
from edgefleet.agent.runner.client import UnixHTTPConnection
from edgefleet.agent.runner.errors import RunnerStartError, RunnerUnavailable
from edgefleet.agent.runner.model import load
from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
from edgefleet.errors import BadRequest
from tests.agent.conftest import wait_until
from tests.support.onnxmodels import affine, expected

ROWS = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder under /tmp: pytest's own paths can pass the 107-byte socket limit."""
    path = Path(tempfile.mkdtemp(prefix="efr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def model(short_dir: Path) -> Path:
    return affine(short_dir / "affine.onnx", inputs=4, outputs=2, seed=3)


def config(short_dir: Path, model: Path, **changes: object) -> RunnerConfig:
    values: dict = {
        "model": model,
        "socket": short_dir / "runner.sock",
        "results": short_dir / "results",
        "name": "affine",
        "version": "1.2",
        "start_timeout": 20.0,
    }
    values.update(changes)
    return RunnerConfig(**values)


@pytest.fixture
def runner(short_dir: Path, model: Path) -> Iterator[Runner]:
    with Runner(config(short_dir, model)) as r:
        yield r


def raw_post(socket_path: Path, body: bytes) -> tuple[int, dict]:
    conn = UnixHTTPConnection(socket_path, timeout=10)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def stored(short_dir: Path) -> list[dict]:
    with Buffer(short_dir / "results" / RESULTS_DB) as buffer:
        return [row.payload for row in buffer.read_from(0)]  # type: ignore[misc]


def test_predictions_equal_the_numpy_reference(runner: Runner, model: Path) -> None:
    answer = runner.predict({"x": ROWS.tolist()})
    got = np.array(answer["outputs"]["y"], dtype=np.float32)
    np.testing.assert_allclose(got, expected(model, ROWS), rtol=1e-5, atol=1e-5)
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert answer["model"] == {"name": "affine", "version": "1.2", "digest": digest}
    assert answer["latency_ms"] > 0


def test_model_info_gives_the_signature(runner: Runner) -> None:
    info = runner.model_info()
    assert info["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": ["N", 4]}]
    assert info["outputs"] == [{"name": "y", "type": "tensor(float)", "shape": ["N", 2]}]
    assert info["model"]["name"] == "affine"


BAD_BODIES = [
    (b"{not json", "not JSON"),
    (b"[1, 2]", '{"inputs"'),
    (json.dumps({"inputs": {"z": [[1, 2, 3, 4]]}}).encode(), "unknown input(s) ['z']"),
    (json.dumps({"inputs": {}}).encode(), "missing input(s) ['x']"),
    (json.dumps({"inputs": {"x": [[1, 2, 3]]}}).encode(), "dimension 1 is 3, not 4"),
    (json.dumps({"inputs": {"x": [1, 2, 3, 4]}}).encode(), "must have 2 dimension(s)"),
    (json.dumps({"inputs": {"x": [["a", "b", "c", "d"]]}}).encode(), "must hold numbers"),
    (json.dumps({"inputs": {"x": [[1, 2, None, 4]]}}).encode(), "must hold numbers"),
    (json.dumps({"inputs": {"x": [[1, 2, 3, 4], [1]]}}).encode(), "not a rectangular array"),
]


def test_bad_input_gets_400_with_the_reason_and_the_runner_keeps_serving(
    runner: Runner, short_dir: Path
) -> None:
    pid = runner.pid
    for body, reason in BAD_BODIES:
        status, doc = raw_post(short_dir / "runner.sock", body)
        assert status == 400, body
        assert doc["error"]["code"] == "bad_input"
        assert reason in doc["error"]["message"], (body, doc)
    with pytest.raises(BadRequest, match=r"must have shape \[\?|dimension 1 is 5, not 4"):
        runner.predict({"x": [[1, 2, 3, 4, 5]]})
    assert runner.predict({"x": ROWS.tolist()})["outputs"]["y"]
    health = runner.health()
    assert runner.pid == pid
    assert (health["calls"], health["errors"]) == (len(BAD_BODIES) + 2, len(BAD_BODIES) + 1)


def test_health_gives_the_p95_of_the_answered_calls_and_counts_the_refused(
    runner: Runner, short_dir: Path
) -> None:
    assert runner.health()["p95_ms"] is None
    latencies = [runner.predict({"x": ROWS.tolist()})["latency_ms"] for _ in range(40)]
    status, _ = raw_post(short_dir / "runner.sock", b"{not json")
    assert status == 400
    health = runner.health()
    assert (health["calls"], health["errors"]) == (41, 1)
    assert health["p95_ms"] == round(sorted(latencies)[37], 3)  # nearest rank: 0.95 * 40 = 38


def test_the_p95_covers_only_the_most_recent_answers(short_dir: Path, model: Path) -> None:
    store = BufferStore(short_dir / "results")
    service = server.Service(load(model, "affine", "1.2", None, threads=1), store, window=5)
    try:
        big = json.dumps({"inputs": {"x": np.ones((50_000, 4)).tolist()}}).encode()
        small = json.dumps({"inputs": {"x": ROWS.tolist()}}).encode()
        service.predict(big)  # the slowest call (and the first, warming up): out of the window
        recent = [service.predict(small)["latency_ms"] for _ in range(5)]
        assert service.health()["p95_ms"] == round(max(recent), 3)  # nearest rank of 5
    finally:
        store.buffer.close()


def test_a_runner_killed_with_sigkill_is_restarted(runner: Runner, model: Path) -> None:
    old = runner.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: runner.restarts == 1, timeout=20, what="a new runner child serving")
    assert runner.pid not in (None, old)
    answer = runner.predict({"x": ROWS.tolist()})
    np.testing.assert_allclose(answer["outputs"]["y"], expected(model, ROWS), rtol=1e-5)
    assert runner.health()["pid"] == runner.pid


def test_a_missing_model_file_is_a_clear_start_error(short_dir: Path) -> None:
    missing = short_dir / "nope.onnx"
    with pytest.raises(
        RunnerStartError, match=rf"exit code 2.*model file {missing} does not exist"
    ):
        Runner(config(short_dir, missing)).start()


def test_a_file_that_is_not_onnx_is_a_clear_start_error(short_dir: Path, model: Path) -> None:
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a cut download
    with pytest.raises(RunnerStartError, match=r"cannot load .* as an ONNX model"):
        Runner(config(short_dir, model)).start()


def test_a_model_whose_digest_differs_is_refused(short_dir: Path, model: Path) -> None:
    other = "sha256:" + "0" * 64
    with pytest.raises(RunnerStartError, match=f"not the expected {other}"):
        Runner(config(short_dir, model, digest=other)).start()


def test_a_socket_served_by_another_runner_is_not_taken(runner: Runner, short_dir: Path) -> None:
    second = Runner(config(short_dir, runner.config.model, results=short_dir / "other"))
    with pytest.raises(RunnerStartError, match="another process is serving"):
        second.start()
    assert runner.health()["calls"] == 0


def test_every_prediction_lands_in_the_result_store(runner: Runner, short_dir: Path) -> None:
    answers = [runner.predict({"x": ROWS[i : i + 1].tolist()}) for i in range(3)]
    answers.append(runner.predict({"x": ROWS[:1].tolist()}))
    records = stored(short_dir)
    assert [r["outputs"] for r in records] == [a["outputs"] for a in answers]
    assert all(r["model"] == answers[0]["model"] for r in records)
    digests = [r["inputs_sha256"] for r in records]
    assert len(set(digests[:3])) == 3 and digests[3] == digests[0]


def test_a_failing_store_loses_no_answer_and_shows_in_health(
    runner: Runner, short_dir: Path, model: Path
) -> None:
    runner.predict({"x": ROWS.tolist()})
    shutil.rmtree(short_dir / "results")  # e.g. the storage it lives on went away
    for _ in range(3):
        answer = runner.predict({"x": ROWS.tolist()})
        np.testing.assert_allclose(answer["outputs"]["y"], expected(model, ROWS), rtol=1e-5)
    health = runner.health()
    assert health["store_errors"] == 3 and health["errors"] == 0
    assert "FileNotFoundError" in health["last_store_error"]
    (short_dir / "results").mkdir()
    runner.predict({"x": ROWS.tolist()})
    assert len(stored(short_dir)) == 1
    assert runner.health()["store_errors"] == 3


def test_concurrent_callers_each_get_their_own_answer(runner: Runner, model: Path) -> None:
    failures: list[str] = []

    def call(seed: int) -> None:
        rows = np.random.default_rng(seed).standard_normal((2, 4)).astype(np.float32)
        conn = UnixHTTPConnection(runner.config.socket, timeout=10)
        body = json.dumps({"inputs": {"x": rows.tolist()}}).encode()
        for _ in range(20):
            conn.request("POST", "/predict", body=body)
            got = json.loads(conn.getresponse().read())["outputs"]["y"]
            if not np.allclose(got, expected(model, rows), rtol=1e-5, atol=1e-5):
                failures.append(f"caller {seed} got another caller's answer")
        conn.close()

    threads = [threading.Thread(target=call, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert runner.health()["calls"] == 120


def test_the_api_is_also_served_on_a_loopback_port(short_dir: Path, model: Path) -> None:
    with Runner(config(short_dir, model, port=0)) as r:
        port = r.health()["port"]
        assert port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/predict", body=json.dumps({"inputs": {"x": ROWS.tolist()}}))
        answer = json.loads(conn.getresponse().read())
        conn.close()
    np.testing.assert_allclose(answer["outputs"]["y"], expected(model, ROWS), rtol=1e-5)


def test_stop_ends_the_child_and_removes_its_socket(short_dir: Path, model: Path) -> None:
    r = Runner(config(short_dir, model))
    r.start()
    proc = r._proc
    r.stop()
    assert proc is not None and proc.returncode == 0
    assert not r.config.socket.exists()
    assert "stopped" in r.config.log_file.read_text()
    with pytest.raises(RunnerUnavailable, match="the runner is stopped"):
        r.predict({"x": ROWS.tolist()})


def test_stop_kills_a_child_that_does_not_answer_sigterm(short_dir: Path, model: Path) -> None:
    r = Runner(config(short_dir, model, stop_timeout=0.5))
    r.start()
    proc = r._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # a hung runtime: SIGTERM stays pending
    r.stop()
    assert proc.returncode == -signal.SIGKILL
    assert r.restarts == 0


AGENT = """
import sys, time
from pathlib import Path
from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
d = Path(sys.argv[1])
r = Runner(RunnerConfig(model=d / "affine.onnx", socket=d / "runner.sock", results=d / "res"))
r.start()
print(r.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_runner_does_not_outlive_an_agent_killed_with_sigkill(
    short_dir: Path, model: Path
) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(short_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert agent.stdout is not None
        child = int(agent.stdout.readline())
        agent.kill()
        agent.wait(10)
        wait_until(lambda: _gone(child), timeout=10, what="the orphaned runner to exit")
    finally:
        agent.kill()
        agent.wait(10)
