"""Per-client rate limits on enrolment and the token endpoint (controller/ratelimit.py):
429 with Retry-After and a message naming the limit, buckets that refill with time,
one bucket per client address and endpoint, X-Forwarded-For believed only from trusted
proxies, bounded memory under a flood of addresses, and the metrics that count it.

Every TestClient request comes from one peer, so these tests pick the client address
either by giving the TestClient a peer of its own or by trusting 127.0.0.1 as a proxy
and sending X-Forwarded-For. Time is a clock the test moves, never a sleep. The limiter
never touches the database, so these run on SQLite only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.metrics import Metrics
from edgefleet.controller.ratelimit import RateLimits, TokenBuckets, client_key, parse_networks
from edgefleet.controller.settings import load_settings
from tests.support.apiclient import API, Api, csr_for, new_key
from tests.support.processes import ControllerProcess

PROXY = "127.0.0.1"
"""The TestClient's peer; trusted as a proxy where a test sends X-Forwarded-For."""


class Clock:
    """A monotonic clock moved by hand, which also notes any read off the event loop."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads_off_the_event_loop = 0

    def __call__(self) -> float:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.reads_off_the_event_loop += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    app: FastAPI
    api: Api
    clock: Clock

    def client(self, peer: str) -> TestClient:
        """Another client of the same app, connecting from ``peer``."""
        return TestClient(self.app, base_url="https://testserver", client=(peer, 40000))

    def enrol(self, xff: str | None = None, client: TestClient | None = None, **kw: Any) -> Any:
        body = {"token": kw.pop("token", "efr.not-a-token"), "csr": csr_for(new_key())}
        return _post(client or self.api.client, "/enrol", {**body, "inventory": {}}, xff)

    def token(self, xff: str | None = None, client: TestClient | None = None) -> Any:
        return _post(client or self.api.client, "/auth/token", {"client_assertion": "x.y.z"}, xff)

    def metric(self, name: str, route_ends: str = "", **labels: str) -> float:
        text = self.api.client.get("/metrics").text
        found = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
            and labels.items() <= sample.labels.items()
            and sample.labels.get("route", "").endswith(route_ends)
        ]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else 0.0


def _post(client: TestClient, path: str, body: dict[str, Any], xff: str | None) -> Any:
    headers = {"x-forwarded-for": xff} if xff is not None else {}
    return client.post(API + path, json=body, headers=headers)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    """Builds a controller app with the settings a test names and a hand-moved clock."""
    apps: list[FastAPI] = []
    stack = contextlib.ExitStack()

    def make(max_clients: int = 50_000, **overrides: Any) -> World:
        settings = load_settings(data_dir=tmp_path / f"controller-{len(apps)}", **overrides)
        prepared = prepare(settings)
        app = create_app(settings)
        clock = Clock()
        rt = app.state.rt
        app.state.rate_limits = RateLimits.from_settings(
            settings, rt.metrics, clock=clock, max_clients=max_clients
        )
        client = TestClient(app, base_url="https://testserver", client=(PROXY, 50000))
        stack.enter_context(client)
        apps.append(app)
        assert prepared.new_admin_token is not None
        return World(app, Api(client, prepared.new_admin_token, prepared.controller_id), clock)

    with stack:
        yield make
    for app in apps:
        app.state.rt.engine.dispose()


def error(r: Any) -> dict[str, str]:
    return r.json()["error"]  # type: ignore[no-any-return]


# -- limited after the burst, refilled with time -----------------------------------------


def test_enrolment_beyond_the_burst_is_refused_429_with_retry_after_and_nothing_stored(
    world: Callable[..., World],
) -> None:
    w = world(enrol_rate_per_second=0.25, enrol_burst=3)
    w.api.site("shop-1")
    token = w.api.token("shop-1")["token"]
    for _ in range(3):
        assert w.enrol(token=token).status_code == 200
    refused = w.enrol(token=token)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "4"  # one token takes 1 / 0.25 s
    assert error(refused)["code"] == "rate_limited"
    message = error(refused)["message"]
    for words in ("enrolment", f"from {PROXY}:", "0.25 per second", "bursts of 3", "retry in 4 s"):
        assert words in message, message
    devices = w.api.ok("GET", "/devices", w.api.admin)
    assert len(devices) == 3, "a refused enrolment stored a device"
    assert w.api.ok("GET", "/tokens", w.api.admin)[0]["uses"] == 3


def test_retry_after_is_whole_seconds_rounded_up(world: Callable[..., World]) -> None:
    w = world(enrol_rate_per_second=0.25, enrol_burst=1)
    assert w.enrol().status_code != 429
    w.clock.advance(1.5)  # 0.375 of a token: 2.5 s to go
    refused = w.enrol()
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "3")
    fast = world(enrol_rate_per_second=50, enrol_burst=1)
    assert fast.enrol().status_code != 429
    refused = fast.enrol()  # 20 ms to go: never "0", which would invite a hot loop
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")


def test_bucket_refills_as_time_passes_but_never_beyond_the_burst(
    world: Callable[..., World],
) -> None:
    w = world(enrol_rate_per_second=2, enrol_burst=3)
    assert [w.enrol().status_code == 429 for _ in range(4)] == [False, False, False, True]
    w.clock.advance(0.5)  # one token
    assert w.enrol().status_code != 429
    assert w.enrol().status_code == 429
    w.clock.advance(3600)  # full again, and no fuller than the burst
    assert [w.enrol().status_code == 429 for _ in range(4)] == [False, False, False, True]


def test_a_rate_of_zero_turns_the_limit_off(world: Callable[..., World]) -> None:
    w = world(
        enrol_rate_per_second=0,
        enrol_burst=1,
        token_rate_per_second=0,
        token_burst=1,
        claim_rate_per_second=0,
        login_rate_per_second=0,
    )
    assert all(w.enrol().status_code != 429 for _ in range(10))
    assert all(w.token().status_code != 429 for _ in range(10))
    assert w.app.state.rate_limits.limits == {}


# -- buckets per client and per endpoint -------------------------------------------------


def test_each_client_address_has_its_own_bucket(world: Callable[..., World]) -> None:
    w = world(enrol_burst=2, enrol_rate_per_second=0.1, trusted_proxies=[PROXY])
    assert [w.enrol("198.51.100.1").status_code == 429 for _ in range(3)] == [False, False, True]
    assert w.enrol("198.51.100.2").status_code != 429
    other = w.client("192.0.2.7")  # a direct peer, no proxy
    assert [w.enrol(client=other).status_code == 429 for _ in range(3)] == [False, False, True]
    assert w.enrol("198.51.100.3").status_code != 429


def test_enrolment_and_token_limits_are_independent(world: Callable[..., World]) -> None:
    w = world(enrol_burst=2, enrol_rate_per_second=0.1, token_burst=3, token_rate_per_second=0.1)
    assert [w.enrol().status_code == 429 for _ in range(3)] == [False, False, True]
    tokens = [w.token() for _ in range(4)]
    assert [r.status_code == 429 for r in tokens] == [False, False, False, True]
    assert tokens[0].status_code == 401, "the token endpoint itself still answers"
    assert "access-token" in error(tokens[3])["message"]
    assert "3" in error(tokens[3])["message"]
    w.clock.advance(10)  # one enrolment token and one access-token token come back
    assert w.enrol().status_code != 429
    assert w.token().status_code != 429
    assert w.enrol().status_code == 429


def test_ipv6_clients_share_their_slash_64(world: Callable[..., World]) -> None:
    w = world(enrol_burst=2, enrol_rate_per_second=0.1, trusted_proxies=[PROXY])
    assert w.enrol("2001:db8:1:2::1").status_code != 429
    assert w.enrol("2001:db8:1:2:ffff::9").status_code != 429
    refused = w.enrol("2001:db8:1:2:abcd::77")
    assert refused.status_code == 429
    assert "2001:db8:1:2::/64" in error(refused)["message"]
    assert w.enrol("2001:db8:1:3::1").status_code != 429


# -- whose address: trusted proxies and X-Forwarded-For ----------------------------------


def test_forwarded_address_is_used_when_the_peer_is_a_trusted_proxy(
    world: Callable[..., World],
) -> None:
    w = world(enrol_burst=1, enrol_rate_per_second=0.1, trusted_proxies=[PROXY, "10.0.0.0/8"])
    # client -> edge proxy 10.0.0.5 -> local proxy 127.0.0.1 -> controller
    assert w.enrol("203.0.113.9, 10.0.0.5").status_code != 429
    refused = w.enrol("203.0.113.9, 10.0.0.5")
    assert refused.status_code == 429
    assert "from 203.0.113.9:" in error(refused)["message"]
    # The hop the edge proxy wrote wins over anything the client put left of it.
    assert w.enrol("1.1.1.1, 203.0.113.9, 10.0.0.5").status_code == 429
    # Several header lines read as one list.
    assert w.enrol("203.0.113.10").status_code != 429
    spoofed = w.api.client.post(
        API + "/enrol",
        json={"token": "x", "csr": csr_for(new_key()), "inventory": {}},
        headers=[("x-forwarded-for", "192.0.2.99"), ("x-forwarded-for", "203.0.113.10")],
    )
    assert spoofed.status_code == 429


def test_an_untrusted_peer_cannot_choose_its_address_with_x_forwarded_for(
    world: Callable[..., World],
) -> None:
    w = world(enrol_burst=3, enrol_rate_per_second=0.1, trusted_proxies=["10.0.0.0/8"])
    answers = [w.enrol(f"198.51.100.{i}") for i in range(4)]
    assert [r.status_code == 429 for r in answers] == [False, False, False, True]
    assert f"from {PROXY}:" in error(answers[3])["message"]
    # Not trusted by default either.
    d = world(enrol_burst=1, enrol_rate_per_second=0.1)
    assert d.enrol("198.51.100.1").status_code != 429
    assert d.enrol("198.51.100.2").status_code == 429


def test_client_key_rules() -> None:
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
    cases = [
        # (peer, X-Forwarded-For lines, key)
        ("203.0.113.9", [], "203.0.113.9"),
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),  # untrusted peer: header ignored
        ("127.0.0.1", [], "127.0.0.1"),  # trusted, but nothing forwarded
        ("127.0.0.1", [""], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.4"], "198.51.100.4"),
        ("127.0.0.1", ["6.6.6.6, 198.51.100.4, 10.1.1.1"], "198.51.100.4"),
        ("127.0.0.1", ["10.9.9.9, 10.1.1.1"], "10.9.9.9"),  # all trusted: the farthest
        ("127.0.0.1", ["198.51.100.4:5123"], "198.51.100.4"),
        ("127.0.0.1", ["[2001:db8::1]:443"], "2001:db8::/64"),
        ("127.0.0.1", ["::ffff:198.51.100.4"], "198.51.100.4"),
        ("127.0.0.1", ["6.6.6.6, unknown"], "unknown"),  # as the trusted proxy wrote it
        ("127.0.0.1", [",".join(["10.0.0.1"] * 40)], "10.0.0.1"),
        ("fd00::1", ["2001:db8:aa:bb:1:2:3:4"], "2001:db8:aa:bb::/64"),
        ("::ffff:127.0.0.1", ["198.51.100.4"], "198.51.100.4"),
        ("testclient", ["198.51.100.4"], "testclient"),  # not an address: never a proxy
        (None, ["198.51.100.4"], "unknown"),
    ]
    for peer, lines, want in cases:
        assert client_key(peer, lines, trusted) == want, (peer, lines)
    # A chain longer than any real one: only the last hops are read, never the spoof.
    long = ", ".join(["6.6.6.6"] + ["10.0.0.1"] * 40)
    assert client_key("127.0.0.1", [long], trusted) == "10.0.0.1"


def test_trusted_proxies_setting_takes_cidrs_and_refuses_anything_else(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, trusted_proxies=["127.0.0.1", "10.1.2.3/8", "::1"])
    assert s.trusted_proxies == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    with pytest.raises(ValidationError, match=r"'proxy\.example' is not an IP network"):
        load_settings(data_dir=tmp_path, trusted_proxies=["proxy.example"])
    with pytest.raises(ValidationError, match="enrol_burst"):
        load_settings(data_dir=tmp_path, enrol_burst=0)


# -- memory, event loop, metrics ---------------------------------------------------------


def test_a_flood_of_distinct_addresses_cannot_grow_memory_without_bound(
    world: Callable[..., World],
) -> None:
    w = world(max_clients=100, enrol_burst=1, enrol_rate_per_second=0.001, trusted_proxies=[PROXY])
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    for i in range(600):
        assert w.enrol(str(ipaddress.IPv4Address(base + i))).status_code != 429
    buckets = w.app.state.rate_limits.limits["enrol"].buckets
    assert len(buckets) == 100
    # The most recent clients are still counted.
    assert w.enrol(str(ipaddress.IPv4Address(base + 599))).status_code == 429


def test_idle_buckets_are_dropped_once_full_again_and_the_cap_holds() -> None:
    clock = Clock()
    b = TokenBuckets(rate=10, burst=20, max_clients=1000, clock=clock)
    for i in range(100_000):
        b.take(f"a{i}")
    assert len(b) == 1000
    clock.advance(b.refill_seconds)  # every bucket is full again: keeping it is pointless
    for i in range(400):
        b.take(f"b{i}")
    assert len(b) == 400, "idle buckets were not dropped as new clients came"
    clock.advance(b.refill_seconds / 2)  # half full: still needed, kept
    for i in range(300):
        b.take(f"c{i}")
    assert len(b) == 700


def test_the_check_runs_on_the_event_loop(world: Callable[..., World]) -> None:
    w = world(enrol_burst=2, token_burst=2)
    for _ in range(3):
        w.enrol()
        w.token()
    assert w.clock.reads_off_the_event_loop == 0, "the rate limit ran in the thread pool"


def test_refusals_are_counted_in_metrics(world: Callable[..., World]) -> None:
    w = world(enrol_burst=1, enrol_rate_per_second=0.1, token_burst=1, token_rate_per_second=0.1)
    for _ in range(3):
        w.enrol()
    w.token()
    w.token()
    assert w.metric("edgefleet_rate_limited_total", endpoint="enrol") == 2
    assert w.metric("edgefleet_rate_limited_total", endpoint="token") == 1
    requests = "edgefleet_http_requests_total"
    assert w.metric(requests, "/enrol", method="POST", status="429") == 2
    assert w.metric(requests, "/auth/token", method="POST", status="429") == 1


# -- the defaults -------------------------------------------------------------------------


def test_defaults_let_a_shop_of_fifty_in_at_once_but_hold_back_a_flood(tmp_path: Path) -> None:
    clock = Clock()
    limits = RateLimits.from_settings(
        load_settings(data_dir=tmp_path), Metrics(lambda: {}), clock=clock
    )
    enrol, token = (limits.limits[e].buckets for e in ("enrol", "token"))
    # 50 devices behind one NAT address power on together: enrol, log in ...
    assert all(enrol.take("shop") == 0 for _ in range(50))
    assert all(token.take("shop") == 0 for _ in range(50))
    # ... then wait for approval, each asking again every 5 s, for ten minutes.
    for _ in range(600):
        clock.advance(1)
        assert all(enrol.take("shop") == 0 for _ in range(10))
    # After a power cut, 200 devices of a bigger site log in again at once.
    assert all(token.take("warehouse") == 0 for _ in range(200))
    # A script sending a thousand requests a second gets a small share of them through.
    clock.advance(100)
    allowed = 0
    for _ in range(10):
        allowed += sum(enrol.take("script") == 0 for _ in range(1000))
        clock.advance(1)
    assert allowed <= enrol.burst + 10 * enrol.rate + 1
    assert allowed < 500


# -- a real controller process -----------------------------------------------------------


def test_real_controller_answers_429_and_ignores_x_forwarded_for_from_loopback(
    tmp_path: Path,
) -> None:
    """Over HTTPS from a real uvicorn worker, which by itself would believe
    X-Forwarded-For from 127.0.0.1; the controller turns that off."""
    ctl = ControllerProcess(
        tmp_path / "ctl", workers=1, enrol_burst=2, enrol_rate_per_second=0.01
    ).start()
    try:
        ctx = ssl.create_default_context(cafile=ctl.ca)
        with httpx.Client(base_url=ctl.url + API, verify=ctx, timeout=30) as c:
            answers = [
                c.post(
                    "/enrol",
                    json={"token": "efr.nope", "csr": csr_for(new_key()), "inventory": {}},
                    headers={"x-forwarded-for": f"198.51.100.{i}"},
                )
                for i in range(3)
            ]
            assert [r.status_code == 429 for r in answers] == [False, False, True]
            assert answers[2].headers["retry-after"] == "100"
            assert "from 127.0.0.1:" in answers[2].json()["error"]["message"]
            metrics = c.get(ctl.url + "/metrics").text
            assert 'edgefleet_rate_limited_total{endpoint="enrol"} 1.0' in metrics
    finally:
        ctl.close()
