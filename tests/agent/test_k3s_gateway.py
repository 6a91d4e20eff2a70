"""The runner gateway of K3s mode (``agent/k3s/gateway.py``): real runner children with
real onnxruntime behind it, called over real HTTP on loopback, as an application in the
cluster calls the ``edgefleet-runner`` Service."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.k3s import gateway as gw
from edgefleet.agent.k3s.gateway import Gateway
from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.update.modelset import StagedModel, stage
from edgefleet.agent.update.switch import ModelServing
from edgefleet.errors import BadRequest, from_response_body
from edgefleet.oci import digest as dg
from tests.agent.conftest import wait_until
from tests.support.onnxmodels import affine

ROWS = np.random.default_rng(11).standard_normal((2, 4)).astype(np.float32).tolist()
PREDICT = json.dumps({"inputs": {"x": ROWS}}).encode()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder under /tmp: pytest's own paths can pass the 107-byte socket limit."""
    path = Path(tempfile.mkdtemp(prefix="efg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def model_set(folder: Path, seed: int, revision: int) -> Path:
    """A slot's folder holding one model, ``affine``, as staging leaves it."""
    model = affine(folder.parent / f"affine-{seed}.onnx", seed=seed)
    stage([StagedModel("affine", model, dg.of_file(model), str(revision))], revision, folder)
    return folder


@pytest.fixture
def serving(short_dir: Path) -> Iterator[ModelServing]:
    """Model ``affine`` served on its main socket, as the agent serves a committed slot."""
    models = ModelServing(short_dir / "run", short_dir / "results", short_dir / "cand-results")
    models.start_timeout = 20.0
    models.serve(model_set(short_dir / "slot-a", seed=1, revision=1), "A")
    yield models
    models.close()


@pytest.fixture
def gateway(short_dir: Path) -> Iterator[Gateway]:
    """Bound (port 0 taken) before the test gets it: no free-port race."""
    gate = Gateway(short_dir / "run", port=0, host="127.0.0.1")
    gate.start()
    yield gate
    gate.close()


def call(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, Any, http.client.HTTPResponse]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read()), resp


def connect(gate: Gateway) -> http.client.HTTPConnection:
    host, port = gate.address
    return http.client.HTTPConnection(host, port, timeout=30)


def raw(gate: Gateway, request: bytes) -> tuple[int, dict[str, str], Any]:
    """One request as bytes, for what http.client would not send; the connection is
    read to its end, so the test also sees that the gateway closed it."""
    with socket.create_connection(gate.address, timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


# -- relaying ----------------------------------------------------------------------------


def test_predict_through_the_gateway_is_predict_on_the_runners_socket(
    serving: ModelServing, gateway: Gateway, short_dir: Path
) -> None:
    direct = RunnerClient(short_dir / "run" / "affine.sock", timeout=10)
    conn = connect(gateway)
    try:
        expected = direct.predict({"x": ROWS})
        for _ in range(3):  # one kept-alive connection, several calls
            status, doc, resp = call(conn, "POST", "/models/affine/predict", PREDICT)
            assert status == 200 and resp.getheader("Content-Type") == "application/json"
            assert doc["outputs"] == expected["outputs"] and doc["model"] == expected["model"]
        status, info, _ = call(conn, "GET", "/models/affine/model")
        assert (status, info) == (200, direct.model_info())
        status, health, _ = call(conn, "GET", "/models/affine/health")
        assert status == 200 and health["pid"] == serving.main["affine"].pid
        assert health["calls"] == 4  # the gateway's three and the direct one
    finally:
        conn.close()
        direct.close()


def test_models_lists_the_served_models_and_never_a_candidate(
    serving: ModelServing, gateway: Gateway, short_dir: Path
) -> None:
    serving.start_candidates(model_set(short_dir / "slot-b", seed=2, revision=2), "B")
    assert (short_dir / "run" / "affine.next.sock").exists()
    conn = connect(gateway)
    try:
        assert call(conn, "GET", "/models")[:2] == (200, ["affine"])
        status, doc, _ = call(conn, "GET", "/models/affine.next/health")
        assert status == 404 and "served: affine" in doc["error"]["message"]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/models/nope/health",
        "/models/../health",
        "/models/.hidden/model",
        "/models/a%2F..%2Fb/model",
    ],
)
def test_an_unknown_model_is_404_at_once_naming_the_models_served(
    serving: ModelServing, gateway: Gateway, path: str
) -> None:
    conn = connect(gateway)
    try:
        started = time.monotonic()
        status, doc, _ = call(conn, "GET", path)
        assert time.monotonic() - started < 1.0  # no wait: nothing is being replaced
        assert status == 404 and doc["error"]["code"] == "not_found"
        assert "is served here; served: affine" in doc["error"]["message"]
    finally:
        conn.close()


def test_an_unknown_path_is_404_and_a_method_405_in_the_runners_shape(gateway: Gateway) -> None:
    conn = connect(gateway)
    try:
        for path in ("/predict", "/models/affine", "/models/affine/predict/x", "/models/a/b"):
            status, doc, _ = call(conn, "GET", path)
            assert status == 404 and "try GET /models" in doc["error"]["message"], path
            conn.close()
        status, doc, _ = call(conn, "DELETE", "/models/affine/predict")
        assert status == 405 and doc["error"]["code"] == "method_not_allowed"
    finally:
        conn.close()


def test_bad_input_is_the_runners_own_400(
    serving: ModelServing, gateway: Gateway, short_dir: Path
) -> None:
    body = json.dumps({"inputs": {"x": [[1, 2, 3]]}}).encode()
    conn = connect(gateway)
    try:
        status, doc, _ = call(conn, "POST", "/models/affine/predict", body)
        assert status == 400 and doc["error"]["code"] == "bad_input"
        assert "dimension 1 is 3, not 4" in doc["error"]["message"]
        assert isinstance(from_response_body(status, doc), BadRequest)
        # the same connection still serves
        assert call(conn, "POST", "/models/affine/predict", PREDICT)[0] == 200
    finally:
        conn.close()


def test_an_oversize_or_unsized_body_is_refused_before_it_is_read(
    serving: ModelServing, gateway: Gateway
) -> None:
    too_big = gw.MAX_BODY_BYTES + 1
    status, headers, doc = raw(
        gateway,
        b"POST /models/affine/predict HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {too_big}\r\n\r\n".encode(),
    )
    assert status == 413 and doc["error"]["code"] == "payload_too_large"
    assert headers["Connection"] == "close"
    status, _, doc = raw(gateway, b"POST /models/affine/predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411 and "Content-Length" in doc["error"]["message"]


def test_the_gateways_copies_of_the_runners_rules_are_the_runners() -> None:
    """The gateway repeats them so the daemon never imports the runner's onnxruntime side."""
    from edgefleet.agent.runner import server
    from edgefleet.agent.update import modelset, switch

    assert gw.MAX_BODY_BYTES == server.MAX_BODY_BYTES
    assert gw.NAME.pattern == modelset.NAME.pattern
    assert gw.CANDIDATE_SUFFIX == switch.CANDIDATE_SUFFIX


# -- handover and outage -----------------------------------------------------------------


def test_an_ab_handover_costs_callers_no_failed_call(
    serving: ModelServing, gateway: Gateway, short_dir: Path
) -> None:
    statuses: list[int] = []
    digests: list[str] = []
    waits: list[float] = []
    stop = threading.Event()

    def caller() -> None:
        conn = connect(gateway)
        try:
            while not stop.is_set():
                started = time.monotonic()
                status, doc, _ = call(conn, "POST", "/models/affine/predict", PREDICT)
                waits.append(time.monotonic() - started)
                statuses.append(status)
                if status == 200:
                    digests.append(doc["model"]["digest"])
        finally:
            conn.close()

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(statuses) >= 20, 10, "calls before the handover")
        old_pid = serving.main["affine"].pid
        gap = serving.serve(model_set(short_dir / "slot-b", seed=2, revision=2), "B")
        new_pid = serving.main["affine"].pid
        done = len(statuses)
        wait_until(lambda: len(statuses) >= done + 20, 10, "calls after the handover")
    finally:
        stop.set()
        thread.join(30)
    assert old_pid != new_pid and gap > 0
    assert set(statuses) == {200}, [s for s in statuses if s != 200]
    assert len(set(digests)) == 2  # answered by the old model, then by the new one
    assert digests[0] != digests[-1]
    assert max(waits) > gap / 4  # a call met the gap and waited it out


def test_a_stopped_runner_gives_503_and_retry_after_within_seconds(
    serving: ModelServing, gateway: Gateway
) -> None:
    conn = connect(gateway)
    try:
        assert call(conn, "POST", "/models/affine/predict", PREDICT)[0] == 200
        serving.main["affine"].stop()
        started = time.monotonic()
        status, doc, resp = call(conn, "POST", "/models/affine/predict", PREDICT)
        waited = time.monotonic() - started
    finally:
        conn.close()
    assert status == 503 and resp.getheader("Retry-After") == "1"
    assert gw.WAIT_S <= waited < gw.WAIT_S + 1.5
    assert doc["error"]["code"] == "runner_unavailable"
    message = doc["error"]["message"]
    assert "affine.sock" in message and "restarting or being replaced" in message
    assert "affine.sock.log" in message


# -- in the K3s backend ------------------------------------------------------------------


def test_the_k3s_backend_runs_the_gateway_and_reports_a_port_in_use(
    serving: ModelServing, short_dir: Path
) -> None:
    pytest.importorskip("kubernetes", reason="pip install -e '.[k3s]' (`make test` does)")
    from edgefleet.agent.k3s.backend import K3sBackend
    from tests.agent.test_k3s import AGENT_NS, LABELS, FakeKube

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    kube = FakeKube()
    backend = K3sBackend(
        lambda: kube, lambda: AGENT_NS, LABELS, port, short_dir / "run", "127.0.0.1"
    )
    try:
        backend.serve()
        [check] = [c for c in backend.checks("cam-1") if c.name == "k3s"]
        assert not check.ok
        assert f"gateway: cannot listen on 127.0.0.1:{port}" in check.detail
        assert "EDGEFLEET_AGENT_SERVICE_PORT" in check.detail
        assert ("create service", f"{AGENT_NS}/edgefleet-runner") in kube.calls
        holder.close()
        backend.serve()  # the next cycle tries again
        assert not [c for c in backend.checks("cam-1") if c.name == "k3s"]
        assert backend.gateway is not None and backend.gateway.address == ("127.0.0.1", port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            assert call(conn, "POST", "/models/affine/predict", PREDICT)[0] == 200
        finally:
            conn.close()
    finally:
        holder.close()
        backend.close()
