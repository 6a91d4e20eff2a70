"""The simulated fleet's HTTPS: one bounded pool of keep-alive connections shared by
every device, each request timed and its failure sorted into a kind.

aiohttp rather than httpx: at thousands of requests a second the client shares two
cores with the controller it measures, and aiohttp's C-accelerated parser costs
several times less CPU per request than httpx's pure-Python stack.

Every failure is recorded here and nowhere else, then raised as :class:`CallFailed` so
a device abandons the rest of its cycle. 429 and 503 carrying Retry-After are the
controller shedding load: counted apart, waited out as the agent waits (Retry-After
plus up to a tenth more, drawn per request: ``agent.backoff.Backoff``), and sent again.

A reconnect storm (``--outage-at``) drops every connection, and the devices' return is
sent on a pool of its own (:data:`STORM`, ``--storm-connections``): as a real fleet
coming back, thousands of new TCP connections and TLS handshakes at once, rather than
the shared keep-alive pool's few dozen.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp

from edgefleet import __version__
from edgefleet.agent.backoff import parse_retry_after
from edgefleet.simulate.stats import Recorder
from edgefleet.wire import API_PREFIX

SHED = (429, 503)
MAX_RETRY_AFTER_S = 60.0
RETRY_AFTER_JITTER = 0.1
"""As the agent: Retry-After plus up to this share more (``agent.backoff.Backoff``)."""

STORM: ContextVar[bool] = ContextVar("storm", default=False)
"""True in a device's task from its return after an outage until its first status is
answered: its requests then go out on the storm's pool, not the shared one."""


class CallFailed(Exception):
    """A request failed (already recorded); the device's cycle ends here."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    """Case-insensitive, as HTTP headers are."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Waited:
    """How long one request waited for a connection of the pool, and whether it went out
    on a kept-alive one (aiohttp's trace)."""

    __slots__ = ("reused", "seconds", "since")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.since = 0.0
        self.reused = False


async def _reused(_s: object, ctx: Any, _p: object) -> None:
    if isinstance(ctx.trace_request_ctx, _Waited):
        ctx.trace_request_ctx.reused = True


async def _queued_start(_s: object, ctx: Any, _p: object) -> None:
    if isinstance(ctx.trace_request_ctx, _Waited):
        ctx.trace_request_ctx.since = time.monotonic()


async def _queued_end(_s: object, ctx: Any, _p: object) -> None:
    waited = ctx.trace_request_ctx
    if isinstance(waited, _Waited):
        waited.seconds += time.monotonic() - waited.since


class Wire:
    """One aiohttp session over a pool of ``connections`` (0: a new connection, with a
    full TLS handshake, for every request, as a device whose keep-alive lapsed).

    ``storm_connections``: the size of the pool a returning fleet comes back on (see
    :data:`STORM`); 0 for none (the shared pool)."""

    def __init__(
        self,
        url: str,
        context: ssl.SSLContext,
        connections: int,
        timeout: float,
        recorder: Recorder,
        storm_connections: int = 0,
        seed: int = 0,
    ) -> None:
        self.base = url.rstrip("/") + API_PREFIX
        self.root = url.rstrip("/")
        self.recorder = recorder
        self.stopping = False
        """Set at the end of the run: shed requests are no longer retried."""
        self.opened = 0
        """Connections opened so far (TCP and TLS handshakes), on every pool."""
        self.inflight = 0
        self.rng = random.Random(f"{seed}:retry-after")
        self._context, self._connections, self._timeout = context, connections, timeout
        trace = aiohttp.TraceConfig()
        trace.on_connection_queued_start.append(_queued_start)
        trace.on_connection_queued_end.append(_queued_end)
        trace.on_connection_create_end.append(self._created)
        trace.on_connection_reuseconn.append(_reused)
        self._trace = trace
        self.session = self._session(context, connections, timeout, trace)
        self.gate = asyncio.Semaphore(connections) if connections > 0 else None
        """Requests queue here, not in aiohttp's pool: the wait is measured the same way,
        and a request's body is built only once it has a connection to go out on."""
        self.slow_session = self._session(context, -1, timeout, trace)
        """Slow devices' own connections, unbounded: a slow reader holds its connection
        for as long as it dawdles, and in the shared pool it would make every other
        device wait behind it, which is not what a slow device does to a real fleet."""
        self.storm_pool = storm_connections
        self.storm_session = (
            self._session(context, storm_connections, timeout, trace)
            if storm_connections > 0
            else None
        )
        self.storm_gate = asyncio.Semaphore(storm_connections) if storm_connections else None

    async def _created(self, _s: object, _ctx: object, _p: object) -> None:
        self.opened += 1

    @staticmethod
    def _session(
        context: ssl.SSLContext, connections: int, timeout: float, trace: aiohttp.TraceConfig
    ) -> aiohttp.ClientSession:
        """``connections``: the pool's size; 0 a new connection per request; -1 unbounded."""
        connector = aiohttp.TCPConnector(
            ssl=context,
            limit=max(connections, 0),
            force_close=connections == 0,
            enable_cleanup_closed=True,
        )
        return aiohttp.ClientSession(
            connector=connector,
            # Per socket operation, not in total: a request waiting for a free connection
            # of the pool is the simulator's queue, not the controller's slowness.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            trace_configs=[trace],
            headers={"User-Agent": f"edgefleet-simulate/{__version__}"},
            skip_auto_headers=("Accept-Encoding",),
            auto_decompress=False,
        )

    async def close(self) -> None:
        await self.session.close()
        await self.slow_session.close()
        if self.storm_session is not None:
            await self.storm_session.close()

    async def drop_connections(self, grace: float) -> None:
        """The outage: once the requests in flight are answered (``grace`` at most),
        close every kept-alive connection of the shared pools, as a network gone away
        does; requests after it open new ones."""
        deadline = time.monotonic() + grace
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        old = (self.session, self.slow_session)
        self.session = self._session(self._context, self._connections, self._timeout, self._trace)
        self.slow_session = self._session(self._context, -1, self._timeout, self._trace)
        for session in old:
            await session.close()

    async def call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        body: bytes | Callable[[], bytes] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        slow: float | None = None,
        root: bool = False,
    ) -> Answer:
        """Send until answered (shed load is retried after Retry-After); record the
        latency of an answer in ``ok``, or the failure, which raises CallFailed.

        The latency runs from the request leaving on a connection (a new one's TCP and
        TLS handshakes included) to the last byte of the answer; the wait for a free
        connection of the pool is recorded apart (``pool_wait``). ``body`` may be built
        once a connection is free (a callable): a signed assertion must not expire in
        the simulator's own queue.

        ``slow``: a slow device's request (on its own connection), and seconds to wait
        after the answer's headers before reading its body; not counted in the latency.
        """
        url = (self.root if root else self.base) + path
        rec = self.recorder
        pooled = slow is None
        storm = pooled and STORM.get() and self.storm_session is not None
        gate = self.storm_gate if storm else self.gate
        resent = False
        while True:
            queued = time.monotonic()
            if pooled and gate is not None:
                await gate.acquire()
                if self.stopping:  # the run is over: the backlog is not sent
                    gate.release()
                    rec.unsent += 1
                    raise CallFailed(endpoint)
            if storm:
                assert self.storm_session is not None
                session = self.storm_session
            else:  # looked up once it may go: an outage replaces the sessions
                session = self.session if pooled else self.slow_session
            started = time.monotonic()
            waited = _Waited()
            waited.seconds = started - queued
            payload = body() if callable(body) else body  # built anew for a resend
            self.inflight += 1
            try:
                async with session.request(
                    method, url, data=payload, headers=headers, trace_request_ctx=waited
                ) as r:
                    heard = time.monotonic()
                    if slow:
                        await asyncio.sleep(slow)
                    read_from = time.monotonic()
                    data = await r.read()
                    done = time.monotonic()
                    status, answer_headers = r.status, r.headers.copy()
            except TimeoutError as exc:
                rec.error(endpoint, "timeout", str(exc) or "no answer in time")
                raise CallFailed(endpoint) from exc
            except (aiohttp.ClientError, OSError) as exc:
                if waited.reused and not resent:
                    # As the agent (agent.client.Channel.exchange): a kept-alive connection
                    # the server closed as the request left is sent again, once, anew.
                    resent = True
                    rec.resent += 1
                    continue
                rec.error(endpoint, "connection", f"{type(exc).__name__}: {exc}")
                raise CallFailed(endpoint) from exc
            finally:
                self.inflight -= 1
                if pooled and gate is not None:
                    gate.release()
            retry_after = parse_retry_after(answer_headers.get("Retry-After"))
            if status in SHED and retry_after is not None:
                rec.shed_load(endpoint, retry_after)
                if self.stopping:
                    raise CallFailed(endpoint)
                wait = min(retry_after, MAX_RETRY_AFTER_S)
                await asyncio.sleep(wait + self.rng.uniform(0, RETRY_AFTER_JITTER * wait))
                continue
            if status not in ok:
                rec.error(endpoint, f"http {status}", data[:300].decode(errors="replace"))
                raise CallFailed(endpoint)
            rec.pool_wait.append(waited.seconds)
            on_wire = heard - queued - waited.seconds
            rec.ok(endpoint, on_wire + (done - read_from), done)
            return Answer(status, answer_headers, data)
