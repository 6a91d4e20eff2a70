"""Per-client rate limits on the two device endpoints anyone can call without
credentials: enrolment (``POST /enrol``) and the access-token exchange
(``POST /auth/token``). Each costs a signature check or a certificate signature and a
database write, so one misbehaving or hostile client could otherwise take a worker's
capacity from the whole fleet.

**Algorithm.** A token bucket per endpoint and client key: ``burst`` requests at once,
refilled at ``rate`` per second. A refused request is answered 429 with Retry-After
(seconds until the next token, rounded up) before the handler runs, so it costs no
database work. A rate of 0 turns an endpoint's limit off.

**Where it runs.** In an async FastAPI dependency, so on the event loop: a
plain-function dependency would run in the thread pool, queue behind database work,
and need a lock. The check has no ``await``, so the event loop runs it start to finish
with no other request in between; no lock exists to contend for. O(1) per request.

**Per worker.** Buckets live in memory in each worker process, so with W workers and
R replicas a client may get up to W x R times the configured rate (exactly so only if
its connections spread evenly; a keep-alive client usually stays on one worker). That
is acceptable for what this is, abuse protection rather than a quota: the allowance
grows with capacity (each worker adds both), so the share of the controller one
client can take stays the same, and a limit that is only approximately right still
turns a client's thousands of requests per second into tens. Exact, fleet-wide quotas
would need shared state (the database or a Redis) on the hot path of every refusal;
not worth it for this. The global backstop against many addresses at once is the
Guard's in-flight cap (503).

**Memory.** Buckets are kept in least-recently-used order. A bucket idle for
``burst / rate`` seconds is full again, which is what a client without a bucket gets,
so it is dropped when the next new client arrives (at most a few per request). Beyond
``max_clients`` live buckets the least recently used one is dropped even if not yet
full: a flood of distinct addresses costs bounded memory (about 300 bytes a bucket),
and forgives only clients that stayed quiet while that many others arrived.

**Client key.** The direct peer's address, unless the peer is a trusted proxy
(``trusted_proxies``, CIDRs): then X-Forwarded-For is read from the right, skipping
trusted hops, and the first untrusted address is the client. Entries left of it were
written by the client and are never believed. IPv6 clients are keyed by their /64,
the block one subscriber usually holds, so rotating through addresses in it buys
nothing.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from edgefleet.controller.metrics import Metrics
from edgefleet.controller.settings import Settings
from edgefleet.errors import RateLimited

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_CLIENTS = 50_000
"""Live buckets per endpoint and worker; about 15 MB at most."""
MAX_FORWARDED_HOPS = 16
"""X-Forwarded-For entries read from the right; no real proxy chain is longer."""
_EVICT_PER_CALL = 4
_MAX_KEY_CHARS = 64


class TokenBuckets:
    """One endpoint's buckets, by client key."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("a bucket needs a positive rate, burst and client cap")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        self.refill_seconds = burst / rate
        """An untouched bucket is full again after this long."""
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one token for ``key``: 0.0 when allowed, else seconds until one is due."""
        now = self.clock()
        buckets = self._buckets
        held = buckets.get(key)
        if held is None:
            self._evict(now)
            tokens = float(self.burst)
        else:
            tokens = min(self.burst, held[0] + (now - held[1]) * self.rate)
            buckets.move_to_end(key)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        """Make room for one new bucket: drop full (idle) ones from the old end, and
        the least recently used one when at the cap."""
        buckets = self._buckets
        for _ in range(_EVICT_PER_CALL):
            if not buckets:
                return
            oldest = next(iter(buckets.values()))
            if len(buckets) < self.max_clients and now - oldest[1] < self.refill_seconds:
                return
            buckets.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Limit:
    endpoint: str
    """Label in ``edgefleet_rate_limited_total{endpoint}``."""
    what: str
    """The requests, in words, for the refusal's message."""
    buckets: TokenBuckets


class RateLimits:
    """Every limit one worker enforces, and how it finds the client's key."""

    def __init__(
        self, limits: Iterable[Limit], trusted_proxies: Iterable[str], metrics: Metrics
    ) -> None:
        self.limits = {limit.endpoint: limit for limit in limits}
        self.trusted = parse_networks(trusted_proxies)
        self.metrics = metrics

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> RateLimits:
        wanted = [
            ("enrol", "enrolment", settings.enrol_rate_per_second, settings.enrol_burst),
            ("token", "access-token", settings.token_rate_per_second, settings.token_burst),
            ("claim", "claim", settings.claim_rate_per_second, settings.claim_burst),
            ("login", "console login", settings.login_rate_per_second, settings.login_burst),
        ]
        limits = [
            Limit(endpoint, what, TokenBuckets(rate, burst, max_clients, clock))
            for endpoint, what, rate, burst in wanted
            if rate > 0
        ]
        return cls(limits, settings.trusted_proxies, metrics)

    def check(self, endpoint: str, request: Request) -> None:
        """Raise RateLimited when this request's client is over ``endpoint``'s limit."""
        limit = self.limits.get(endpoint)
        if limit is None:
            return
        peer = request.client.host if request.client else None
        key = client_key(peer, request.headers.getlist("x-forwarded-for"), self.trusted)
        wait = limit.buckets.take(key)
        if wait <= 0.0:
            return
        self.metrics.rate_limited.labels(endpoint=endpoint).inc()
        seconds = max(1, math.ceil(wait))
        b = limit.buckets
        raise RateLimited(
            f"too many {limit.what} requests from {key}: the limit is {b.rate:g} per second "
            f"with bursts of {b.burst}; retry in {seconds} s",
            retry_after=seconds,
        )


def rate_limited(endpoint: str) -> Any:
    """A route dependency enforcing ``endpoint``'s limit (see the module docstring)."""

    async def check(request: Request) -> None:
        request.app.state.rate_limits.check(endpoint, request)

    return Depends(check)


# -- client keys -------------------------------------------------------------------------


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (a bare address is a /32 or /128); ValueError names the bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not an IP network; write CIDRs such as 10.0.0.0/8 or 127.0.0.1"
            ) from exc
    return tuple(networks)


def client_key(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The address a request is counted against (see "Client key" above)."""
    peer_ip = _address(peer) if peer else None
    if peer_ip is None:
        return (peer or "unknown")[:_MAX_KEY_CHARS]
    if not forwarded_for or not _trusted(peer_ip, trusted):
        return _key(peer_ip)
    hops = ",".join(forwarded_for).rsplit(",", MAX_FORWARDED_HOPS)
    if len(hops) > MAX_FORWARDED_HOPS:
        del hops[0]  # beyond what we read; never believed
    nearest = peer_ip
    for raw in reversed(hops):
        hop = raw.strip()
        if not hop:
            continue
        ip = _address(hop)
        if ip is None:
            # Written by a trusted proxy, so not the client's choice: count it as it is.
            return hop[:_MAX_KEY_CHARS]
        if not _trusted(ip, trusted):
            return _key(ip)
        nearest = ip
    return _key(nearest)  # every hop is trusted: the farthest one is all we know


def _trusted(ip: Address, trusted: tuple[Network, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in trusted)


def _address(text: str) -> Address | None:
    """An IP from a peer or X-Forwarded-For entry; tolerates ``1.2.3.4:port`` and
    ``[v6]:port``; IPv4-mapped IPv6 becomes IPv4."""
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _key(ip: Address) -> str:
    if ip.version == 6:
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
