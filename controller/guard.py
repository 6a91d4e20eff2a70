"""One ASGI middleware in front of everything: body size cap, overload shedding, and
request metrics (by route template, so device ids do not explode label sets)."""

from __future__ import annotations

import json
import time
from typing import Any

from edgefleet.controller.metrics import Metrics

Scope = dict[str, Any]


class Guard:
    def __init__(
        self,
        app: Any,
        metrics: Metrics,
        max_body: int,
        max_inflight: int,
        max_result_body: int | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.max_result_body = max_result_body or max_body
        """Result batches (``POST .../results``, gzipped) may be larger than other bodies."""
        self.max_inflight = max_inflight
        self.inflight = 0

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
                send, 503, "overloaded", "the controller is busy; retry later", retry_after=1
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
        try:
            await self.app(scope, replay, watching_send)
        finally:
            self.inflight -= 1
            self._observe(scope, status[0], started)

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


async def _reject(
    send: Any, status: int, code: str, message: str, retry_after: int | None = None
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
