"""One ASGI middleware in front of everything: body size cap, overload shedding, and
request metrics (by route template, so device ids do not explode label sets).

**Shedding.** Past ``max_inflight`` requests in the app, a worker answers 503 at once
with a Retry-After, before reading the body: a refusal costs microseconds, where a
queue without bound would turn a reconnect storm into timeouts. The Retry-After is
jittered and scaled to the load (:meth:`Guard.retry_after`): a constant 1 s sends a
whole fleet turned away in the same second back in the same second (the agent adds
only a tenth), and again, until timeouts end it.

uvicorn's own ``limit_concurrency`` is left off: its 503 carries no Retry-After and
counts connections, not requests, so it would refuse a returning fleet's idle
keep-alive connections as well."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from edgefleet.controller.metrics import Metrics

Scope = dict[str, Any]

RETRY_AFTER_MAX_S = 20
"""The longest Retry-After for overload unless ``shed_retry_after_max_seconds`` says
otherwise: under three of a device's intervals at the default 10 s."""
SERVICE_GUESS_S = 0.1
"""A request's time in the app before any was measured: cautious (a worker that has
served nothing yet spreads what it sheds widely)."""
SERVICE_WEIGHT = 0.05
"""Weight of each request in the moving average of that time."""


class Guard:
    def __init__(
        self,
        app: Any,
        metrics: Metrics,
        max_body: int,
        max_inflight: int,
        max_result_body: int | None = None,
        retry_after_max: int = RETRY_AFTER_MAX_S,
        rng: random.Random | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.max_result_body = max_result_body or max_body
        """Result batches (``POST .../results``, gzipped) may be larger than other bodies."""
        self.max_inflight = max_inflight
        self.inflight = 0
        self.retry_after_max = max(1, retry_after_max)
        self._rng = rng or random.Random()
        self._clock = clock
        self._shed = _PerSecond(clock)
        self._service_s = SERVICE_GUESS_S
        """Moving average of the time a request spends in the app."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        limit = self._limit(scope)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _reject(send, 413, "payload_too_large", self._too_large_msg(limit))
                self._observe(scope, 413, started)
                return
        if self.inflight >= self.max_inflight:
            await _reject(
                send,
                503,
                "overloaded",
                "the controller is busy; retry later",
                retry_after=self.retry_after(),
            )
            self._observe(scope, 503, started)
            return

        # Read the whole (capped) body before the app sees it, so an oversized body sent
        # without Content-Length is answered 413 here, whatever endpoint it was for.
        messages = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > limit:
                await _reject(send, 413, "payload_too_large", self._too_large_msg(limit))
                self._observe(scope, 413, started)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Any:
            if messages:
                return messages.pop(0)
            return await receive()

        async def watching_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.inflight += 1
        admitted = self._clock()
        try:
            await self.app(scope, replay, watching_send)
        finally:
            self.inflight -= 1
            took = self._clock() - admitted
            self._service_s += SERVICE_WEIGHT * (took - self._service_s)
            self._observe(scope, status[0], started)

    def retry_after(self) -> int:
        """Whole seconds for a shed request to wait, drawn uniformly from 1 to a spread:
        the requests this worker shed in the last second over what it can serve in one
        (Little's law: ``max_inflight`` over the mean time a request spends in the app),
        at most ``retry_after_max``. What is turned away in one second then comes back
        over as many seconds as the worker needs to serve it, not all in the next one;
        a worker that sheds less than it can serve in a second says 1."""
        self._shed.add()
        per_second = max(1, self.max_inflight) / max(self._service_s, 1e-3)
        spread = min(self.retry_after_max, 1 + int((self._shed.recent() - 1) / per_second))
        return self._rng.randint(1, spread)

    def _limit(self, scope: Scope) -> int:
        if scope.get("method") == "POST" and scope.get("path", "").endswith("/results"):
            return self.max_result_body
        return self.max_body

    @staticmethod
    def _too_large_msg(limit: int) -> str:
        return f"request bodies are limited to {limit} bytes"

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.requests.labels(method, path, str(status)).inc()
        self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)


class _PerSecond:
    """Events in the current second and the one before it (no thread: the event loop)."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._second = clock()
        self._now = 0
        self._before = 0

    def _roll(self) -> None:
        now = self._clock()
        if now - self._second >= 1.0:
            self._before = self._now if now - self._second < 2.0 else 0
            self._second, self._now = now, 0

    def add(self) -> None:
        self._roll()
        self._now += 1

    def recent(self) -> int:
        """The larger of this second's count so far and the last second's."""
        self._roll()
        return max(self._now, self._before)


async def _reject(
    send: Any, status: int, code: str, message: str, retry_after: int | None = None
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
