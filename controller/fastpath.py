"""A device's most frequent call, ``GET /api/v1/devices/{id}/desired`` answered 304,
served without FastAPI's routing and dependency solving: they were three quarters of
its cost, and every device makes this call every interval.

Only a request the caches answer completely is taken here, with the same checks as the
route's (``deps.device_claims`` and ``deps.check_device``). Anything else (a cache miss,
a refused token, a changed ETag) goes on to the FastAPI route, which answers it and
says why."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgefleet.controller.api.deps import bearer_of, check_device, device_claims
from edgefleet.controller.runtime import Runtime
from edgefleet.errors import EdgefleetError

PATH = "/api/v1/devices/{device_id}/desired"
_MATCH = re.compile(r"^/api/v1/devices/([^/]+)/desired$")


@dataclass(frozen=True)
class _Route:
    path: str


ROUTE = _Route(PATH)
"""What ``Guard`` labels the request's metrics with, as for the route it stands in for."""


class DesiredFastPath:
    """ASGI middleware in front of the app (inside ``Guard``, whose metrics it keeps)."""

    def __init__(self, app: Any, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            found = _MATCH.match(scope["path"])
            etag = found and self._not_modified(found.group(1), scope["headers"])
            if etag:
                scope["route"] = ROUTE
                headers = [(b"etag", etag.encode()), (b"cache-control", b"no-cache")]
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)

    def _not_modified(self, device_id: str, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The ETag to answer 304 with, or None to leave the request to the route."""
        authorization = if_none_match = b""
        for name, value in headers:
            if name == b"authorization":
                authorization = value
            elif name == b"if-none-match":
                if_none_match = value
        if not if_none_match:
            return None
        try:  # first: its epoch check drops caches another worker announced stale
            claims = device_claims(self.rt, bearer_of(authorization.decode("latin-1")), device_id)
            auth, entry = self.rt.cached_auth(device_id), self.rt.cached_desired(device_id)
            if auth is None or entry is None or entry.etag.encode() != if_none_match:
                return None
            check_device(auth, claims, device_id)
        except EdgefleetError:
            return None
        return entry.etag
