"""Health checks on their own: the policy a profile gives, the probe compared without
NumPy, HTTP and exec checks, timeouts and the deadline."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.health import tensors
from edgefleet.agent.health.checks import Target
from edgefleet.agent.health.policy import CheckSpec, HealthPolicy, parse_policy
from edgefleet.agent.health.suite import run_checks
from edgefleet.errors import ConfigError
from edgefleet.models.pack import make_probe, read_signature
from edgefleet.percentile import percentile
from tests.support.onnxmodels import affine

NO_MODELS = Target([], {"EDGEFLEET_SLOT": "B"})


def test_a_profile_without_checks_gets_model_load_and_probe() -> None:
    policy = parse_policy({})
    assert [c.type for c in policy.checks] == ["model_load", "probe"]
    assert (policy.deadline_seconds, policy.max_attempts) == (60.0, 3)


def test_the_profile_shape_is_read_with_model_load_always_first() -> None:
    policy = parse_policy(
        {
            "health_deadline_seconds": 20,
            "max_attempts": 2,
            "health_checks": [
                {"type": "latency", "p95_ms": 50, "samples": 10},
                {"type": "http", "url": "http://127.0.0.1:1/ready", "expect_status": 204},
                {"type": "exec", "command": ["true"], "timeout_seconds": 3},
            ],
        }
    )
    assert [c.type for c in policy.checks] == ["model_load", "latency", "http", "exec"]
    assert policy.checks[1] == CheckSpec("latency", 30.0, p95_ms=50.0, samples=10)
    assert policy.checks[2].expect_status == 204 and policy.checks[3].timeout_seconds == 3
    assert (policy.deadline_seconds, policy.max_attempts) == (20.0, 2)


@pytest.mark.parametrize(
    ("policies", "words"),
    [
        ({"health_checks": [{"type": "smoke"}]}, r"health_checks\[0\]: type must be one of"),
        ({"health_checks": [{"type": "latency"}]}, "needs p95_ms"),
        ({"health_checks": [{"type": "http", "url": "ftp://x"}]}, "http:// or https://"),
        ({"health_checks": [{"type": "exec", "command": "reboot"}]}, "list of strings"),
        ({"max_attempts": 11}, r"max_attempts must be 1\.\.10"),
        ({"health_deadline_seconds": -1}, "positive number"),
    ],
)
def test_a_bad_policy_names_the_entry_to_fix(policies: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_policy(policies)


def test_the_standard_library_probe_agrees_with_numpy(tmp_path: Path) -> None:
    """Same verdict as ``Probe.compare`` (NumPy) for the model's own answer, a small
    drift within tolerance, a real difference, and a wrong shape."""
    path = affine(tmp_path / "m.onnx", seed=3)
    probe = make_probe(path, read_signature(path))
    [want] = probe.outputs
    right = want.array()
    for actual in (right, right + 1e-6, right + 0.5, right[:, :1]):
        mine, evidence = tensors.compare(probe, {"y": actual.tolist()})
        assert bool(mine) == bool(probe.compare({"y": actual})), actual
        assert evidence["y"]["expected"] == pytest.approx(right.ravel().tolist())
    inputs = tensors.probe_inputs(probe)
    np.testing.assert_array_equal(np.array(inputs["x"], dtype=np.float32), probe.arrays()["x"])


def test_nan_never_matches_and_a_missing_output_is_named(tmp_path: Path) -> None:
    probe = make_probe(affine(tmp_path / "m.onnx"), read_signature(tmp_path / "m.onnx"))
    [want] = probe.outputs
    nan = np.full(want.shape, np.nan).tolist()
    assert tensors.compare(probe, {"y": nan})[0]
    assert tensors.compare(probe, {})[0] == ["y: missing from the model's outputs"]


def test_percentile_is_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 95) == 95.0 and percentile([3.0], 95) == 3.0


@pytest.fixture
def app() -> Iterator[str]:
    """An application on the device answering /ready 200 and /broken 503."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path == "/ready" else 503
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ready" if status == 200 else b"db down")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _one(spec: CheckSpec, deadline_s: float = 10.0) -> list:
    policy = HealthPolicy((spec,), deadline_s)
    return run_checks(policy, NO_MODELS, time.monotonic() + deadline_s)


def test_http_check_passes_on_the_expected_status_and_keeps_the_body(app: str) -> None:
    [ok, stable] = _one(CheckSpec("http", 5.0, url=f"{app}/ready"))
    assert ok.ok and ok.evidence["status"] == 200 and stable.ok
    [bad, _] = _one(CheckSpec("http", 5.0, url=f"{app}/broken"))
    assert not bad.ok and "answered 503, expected 200" in bad.detail
    assert bad.evidence["body"] == "db down"
    [down, _] = _one(CheckSpec("http", 5.0, url="http://127.0.0.1:9/ready"))
    assert not down.ok and "Connection refused" in down.detail


def test_exec_check_wants_exit_zero_and_keeps_the_output_tail() -> None:
    script = 'echo "slot $EDGEFLEET_SLOT"; echo oops >&2; exit 3'
    [bad, _] = _one(CheckSpec("exec", 5.0, command=("sh", "-c", script)))
    assert not bad.ok and bad.detail == "sh exited 3"
    assert bad.evidence["stdout"] == "slot B\n" and bad.evidence["stderr"] == "oops\n"
    [ok, _] = _one(CheckSpec("exec", 5.0, command=("true",)))
    assert ok.ok


def test_a_check_over_its_timeout_fails_and_the_deadline_stops_the_rest() -> None:
    slow = CheckSpec("exec", 0.3, command=("sleep", "5"))
    started = time.monotonic()
    [timed_out, _] = _one(slow)
    assert time.monotonic() - started < 2
    assert not timed_out.ok and "ran longer than 0.3 s" in timed_out.detail
    policy = HealthPolicy((CheckSpec("exec", 5.0, command=("sleep", "5")), slow), 0.4)
    first, second, _ = run_checks(policy, NO_MODELS, time.monotonic() + 0.4)
    assert not first.ok and first.duration_s < 1.0
    assert not second.ok and second.detail.startswith("not run: the health deadline")
