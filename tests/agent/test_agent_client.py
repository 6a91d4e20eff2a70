"""The agent's HTTP client on ``http.client``: one kept-alive connection, resent once if stale."""

from __future__ import annotations

import http.client
import io
import logging
import ssl
import time

import jwt
import pytest

from edgefleet.agent.client import (
    MAX_BODY_BYTES,
    Channel,
    ControllerClient,
    ResponseTooLarge,
    Unreachable,
    parse_controller_url,
)
from edgefleet.agent.clock import Clock
from edgefleet.agent.state import Phase
from edgefleet.agent.trust import fetch_pinned_roots, ssl_context
from edgefleet.errors import ConfigError, TrustError, Unavailable
from tests.agent.conftest import wait_until
from tests.agent.fakecontroller import FakeController
from tests.agent.pki import TestPKI
from tests.support.faultproxy import FaultProxy


def _client(fake: FakeController, url: str | None = None, timeout: float = 3.0):
    return ControllerClient(url or fake.url, ssl_context(fake.pki.root.pem), Clock(), timeout)


def test_successive_heartbeats_share_one_connection_and_survive_an_idle_close(
    fake: FakeController, run_agent, caplog
):
    caplog.set_level(logging.DEBUG, logger="edgefleet.agent")
    fake.interval_seconds = 1
    agent = run_agent()
    wait_until(lambda: fake.count("POST", "/status") >= 3, timeout=8, what="three heartbeats")
    # One connection for the unverified chain fetch, one for everything since.
    assert fake.connections == 2
    time.sleep(0.3)  # between heartbeats (>= 1 s apart): the connection is idle
    fake.close_connections()  # the server's keep-alive idle timeout
    n = fake.count("POST", "/status")
    wait_until(lambda: fake.count("POST", "/status") >= n + 2, timeout=8, what="heartbeats")
    assert fake.connections == 3
    assert agent.state.phase == Phase.ready and agent.state.last_error is None
    assert "closed by the server" in caplog.text  # seen while idle, so nothing was resent
    assert "retrying in" not in caplog.text


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/auth/token"), ("GET", "/devices/"), ("POST", "/devices/")],
    ids=["token", "desired", "status"],
)
def test_a_request_dropped_on_a_kept_alive_connection_is_resent_at_once(
    fake: FakeController, run_agent, caplog, method, path
):
    caplog.set_level(logging.DEBUG, logger="edgefleet.agent")
    fake.drop_next(method, path)
    agent = run_agent(once=True)
    agent.join(timeout=8)
    assert agent.result == 0, agent.error
    sent = [r for r in fake.requests if r.method == method and r.path.startswith("/api/v1" + path)]
    assert len(sent) == 2
    assert fake.connections == 3  # chain fetch, the dropped one, the one resent on
    assert "on a kept-alive connection; resending" in caplog.text
    assert "retrying in" not in caplog.text  # resent by the client, not the daemon's backoff
    if path == "/auth/token":
        claims = [
            jwt.decode(r.body["client_assertion"], options={"verify_signature": False})
            for r in sent
        ]
        assert claims[0]["jti"] != claims[1]["jti"]  # the controller refuses a replayed jti


def test_a_request_dropped_on_a_fresh_connection_is_left_to_the_daemons_backoff(
    fake: FakeController, run_agent, caplog
):
    caplog.set_level(logging.INFO, logger="edgefleet.agent")
    fake.drop_next("POST", "/enrol")  # enrol opens the verified connection
    agent = run_agent(once=True)
    agent.join(timeout=8)
    assert agent.result == 0, agent.error
    assert fake.count("POST", "/enrol") == 2
    assert "Unreachable(unreachable)" in caplog.text and "retrying in" in caplog.text


def test_an_oversized_answer_is_refused_unread_and_the_next_request_works(fake):
    fake.fail_next("GET", "/pki/chain", 200, body=b"x" * (MAX_BODY_BYTES + 1))
    client = _client(fake)
    try:
        with pytest.raises(ResponseTooLarge, match="larger than"):
            client.request("GET", "/pki/chain")
        assert client.request("GET", "/pki/chain").status == 200
        assert client.channel.connections == 2  # the refused answer's connection was dropped
    finally:
        client.close()


class _FakeSocket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def test_an_oversized_chunked_answer_is_refused_without_reading_it_all():
    chunk = b"x" * 65536
    n = MAX_BODY_BYTES // len(chunk) + 2
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * n + b"0\r\n\r\n"
    resp = http.client.HTTPResponse(_FakeSocket(raw))  # type: ignore[arg-type]
    resp.begin()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    channel = Channel(parse_controller_url("https://ctl.example"), ctx, 1.0)
    with pytest.raises(ResponseTooLarge):
        channel._read_body(resp, "GET", "/x")
    assert resp.fp is not None and resp.fp.tell() < MAX_BODY_BYTES + 2 * len(chunk)


def test_a_server_that_fails_verification_is_a_trust_error(fake):
    client = ControllerClient(fake.url, ssl_context(TestPKI("other").root.pem), Clock(), 3.0)
    try:
        with pytest.raises(TrustError, match="pinned roots"):
            client.request("GET", "/pki/chain")
    finally:
        client.close()


def test_a_silent_server_is_unreachable_within_the_timeout(fake):
    with FaultProxy(fake.port) as proxy:
        proxy.delay(1000)
        client = _client(fake, f"https://127.0.0.1:{proxy.port}", timeout=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(Unreachable):
                client.request("GET", "/pki/chain")
        finally:
            client.close()
        assert time.monotonic() - started < 1.0


def test_the_date_header_of_an_error_answer_still_sets_the_clock(fake):
    fake.date_offset = 3600
    fake.fail_next("GET", "/pki/chain", 503, headers={"Retry-After": "7"})
    client = _client(fake)
    try:
        with pytest.raises(Unavailable) as caught:
            client.request("GET", "/pki/chain")
    finally:
        client.close()
    assert caught.value.retry_after == 7
    assert 3590 < client.clock.offset < 3601


def test_the_url_path_prefix_is_kept(fake):
    with pytest.raises(Unreachable, match="HTTP 404"):
        fetch_pinned_roots(fake.url + "/edge/", [fake.pki.pin], 3.0)
    assert fake.paths() == ["/edge/api/v1/pki/chain"]


def test_controller_urls_are_https_host_port_and_path_only():
    assert parse_controller_url("https://ctl.example") == ("ctl.example", 443, "")
    assert parse_controller_url("https://ctl.example:8443/fleet/") == (
        "ctl.example",
        8443,
        "/fleet",
    )
    assert parse_controller_url("https://[::1]:9/") == ("::1", 9, "")
    for bad in (
        "http://ctl.example",
        "https://",
        "https://u:p@ctl.example",
        "https://ctl.example/?x=1",
        "https://ctl.example:99999",
    ):
        with pytest.raises(ConfigError):
            parse_controller_url(bad)


def test_the_verified_context_trusts_only_the_pinned_roots_with_hostname_checks(pki):
    ctx = ssl_context(pki.root.pem)
    assert len(ctx.get_ca_certs()) == 1
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
