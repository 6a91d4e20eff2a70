"""The fault proxy itself: each mode does what the agent tests rely on."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.faultproxy import FaultProxy

PAYLOAD = b"x" * 10_000


@pytest.fixture
def upstream() -> Iterator[int]:
    """A server that answers every connection with PAYLOAD, echoing nothing."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(16)
                    conn.sendall(PAYLOAD)
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    srv.close()


def _fetch(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"hello")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_pass_forwards_both_ways(upstream):
    with FaultProxy(upstream) as proxy:
        assert _fetch(proxy.port) == PAYLOAD


def test_drop_closes_at_once_and_pass_recovers(upstream):
    with FaultProxy(upstream) as proxy:
        proxy.drop()
        try:
            got = _fetch(proxy.port)
        except ConnectionResetError:
            got = b""  # closed with our bytes unread: the kernel answers RST, not FIN
        assert got == b""
        proxy.forward()
        assert _fetch(proxy.port) == PAYLOAD


def test_refuse_resets_the_connection(upstream):
    with FaultProxy(upstream) as proxy:
        proxy.refuse()
        with pytest.raises(ConnectionResetError):
            _fetch(proxy.port)


def test_delay_adds_latency(upstream):
    with FaultProxy(upstream) as proxy:
        proxy.delay(200)
        started = time.monotonic()
        assert _fetch(proxy.port) == PAYLOAD
        assert time.monotonic() - started >= 0.4  # one chunk each way


def test_cut_after_truncates_the_upstream_stream(upstream):
    with FaultProxy(upstream) as proxy:
        proxy.cut_after(1000)
        assert _fetch(proxy.port) == PAYLOAD[:1000]
