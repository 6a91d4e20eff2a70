"""The agent's only door to the controller: one keep-alive HTTPS client.

httpx's errors and every non-2xx answer become :mod:`edgefleet.errors` here
and nowhere else, so the rest of the agent sees one family: ``ApiError``
subclasses carrying the controller's own code and message (and Retry-After),
``TrustError`` when the server fails verification against the pinned roots,
and :class:`Unreachable` when no answer came at all. Every answer's ``Date``
header feeds the clock.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgefleet import __version__
from edgefleet.agent._httpx import httpx
from edgefleet.agent.backoff import parse_retry_after
from edgefleet.agent.clock import Clock
from edgefleet.errors import ApiError, EdgefleetError, TrustError, from_response_body
from edgefleet.wire import (
    API_PREFIX,
    AccessToken,
    DesiredState,
    EnrolRequest,
    EnrolResponse,
    StatusAck,
    StatusReport,
    TokenRequest,
)

log = logging.getLogger("edgefleet.agent")

M = TypeVar("M", bound=BaseModel)


class Unreachable(EdgefleetError):
    """No HTTP answer at all: connection refused or reset, timeout, DNS. Always retried."""

    default_code = "unreachable"


def _is_verify_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class ControllerClient:
    """Typed calls of the device API over one ``httpx.Client`` (keep-alive, pinned TLS)."""

    def __init__(
        self,
        base_url: str,
        verify: ssl.SSLContext,
        clock: Clock,
        timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.clock = clock
        self._http = httpx.Client(
            base_url=base_url + API_PREFIX,
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"User-Agent": f"edgefleet-agent/{__version__}"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: BaseModel | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; return a 2xx/304 answer or raise an Edgefleet error."""
        body = json.model_dump(mode="json", exclude_none=False) if json is not None else None
        try:
            resp = self._http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            if _is_verify_failure(exc):
                raise TrustError(
                    f"{self.base_url} failed verification against the pinned roots: {exc}"
                ) from exc
            raise Unreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        self.clock.observe(resp.headers.get("date"), time.time())
        if resp.is_success or resp.status_code == 304:
            return resp
        try:
            payload: Any = resp.json()
        except ValueError:
            payload = None
        raise from_response_body(
            resp.status_code,
            payload,
            retry_after=parse_retry_after(resp.headers.get("retry-after")),
        )

    @staticmethod
    def _parse(resp: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(resp.content)
        except ValidationError as exc:
            raise ApiError(
                f"the controller's answer to {resp.request.method} {resp.request.url.path} "
                f"is not a valid {model.__name__}: {exc.error_count()} error(s), first: "
                f"{exc.errors()[0]['msg']}",
                code="bad_response",
            ) from exc

    @staticmethod
    def _bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def enrol(self, req: EnrolRequest) -> EnrolResponse:
        """200 (enrolled) and 202 (awaiting approval) both come back as an EnrolResponse."""
        return self._parse(self.request("POST", "/enrol", json=req), EnrolResponse)

    def token(self, assertion: str) -> AccessToken:
        req = TokenRequest(client_assertion=assertion)
        return self._parse(self.request("POST", "/auth/token", json=req), AccessToken)

    def desired(
        self, device_id: str, token: str, etag: str | None
    ) -> tuple[DesiredState | None, str | None]:
        """The desired state and its ETag, or (None, etag) when it has not changed (304)."""
        headers = self._bearer(token)
        if etag:
            headers["If-None-Match"] = etag
        resp = self.request("GET", f"/devices/{device_id}/desired", headers=headers)
        if resp.status_code == 304:
            return None, etag
        return self._parse(resp, DesiredState), resp.headers.get("etag")

    def status(self, device_id: str, token: str, report: StatusReport) -> StatusAck:
        resp = self.request(
            "POST", f"/devices/{device_id}/status", json=report, headers=self._bearer(token)
        )
        return self._parse(resp, StatusAck)
