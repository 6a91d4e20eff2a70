"""The agent's only door to the controller: one keep-alive HTTPS connection.

Built on the standard library's ``http.client`` rather than httpx: httpx and
what it brings (httpcore, h11, anyio, certifi, idna) cost the daemon ~8 MB of
its 50 MB budget, for one connection to one server that ``http.client`` does
as well.

Transport failures and every non-2xx answer become :mod:`edgefleet.errors`
here and nowhere else, so the rest of the agent sees one family: ``ApiError``
subclasses carrying the controller's own code and message (and Retry-After),
``TrustError`` when the server fails verification against the pinned roots,
and :class:`Unreachable` when no answer came at all. Every answer's ``Date``
header feeds the clock.
"""

from __future__ import annotations

import http.client
import logging
import select
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from json import loads as json_loads
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ValidationError

from edgefleet import __version__
from edgefleet.agent.backoff import parse_retry_after
from edgefleet.agent.clock import Clock
from edgefleet.errors import ApiError, ConfigError, EdgefleetError, TrustError, from_response_body
from edgefleet.wire import (
    API_PREFIX,
    CLAIM_SCHEME,
    CLOCK_TOLERANCE_S,
    AccessToken,
    ClaimCreated,
    ClaimRequest,
    ClaimStatus,
    DesiredState,
    EnrolRequest,
    EnrolResponse,
    RegistryToken,
    RenewRequest,
    ResultAck,
    StatusAck,
    StatusReport,
    TokenRequest,
    UpdateAck,
    UpdateReport,
)

log = logging.getLogger("edgefleet.agent")

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest answer the agent reads. Desired states and chains are kilobytes; a
server (or a man in the middle of the unverified chain fetch) must not be able
to make a small device allocate without bound."""

MAX_CONNECT_TIMEOUT_S = 10.0

_READ_CHUNK = 64 * 1024

_STALE = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)
"""What a kept-alive connection the server has closed looks like on the next
request: ``RemoteDisconnected`` (a ConnectionResetError), a reset, a broken
pipe, or a TLS EOF. Only these, and only on a reused connection, are resent."""


class Unreachable(EdgefleetError):
    """No HTTP answer at all: connection refused or reset, timeout, DNS. Always retried."""

    default_code = "unreachable"


class ControllerURL(NamedTuple):
    host: str
    port: int
    prefix: str
    """Path the controller is mounted under (``""`` at the root), without a trailing slash."""


def parse_controller_url(url: str) -> ControllerURL:
    """Split ``https://host[:port][/prefix]``; anything else is a ConfigError."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise ConfigError(f"controller URL {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme != "https":
        raise ConfigError(f"controller URL {url!r} must start with https://")
    if not parts.hostname:
        raise ConfigError(f"controller URL {url!r} has no host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(
            f"controller URL {url!r} may have a host, port and path only "
            "(no user, query or fragment)"
        )
    return ControllerURL(parts.hostname, port, parts.path.rstrip("/"))


@dataclass(frozen=True)
class Response:
    """A whole answer, body read (and capped) before the connection is used again."""

    method: str
    path: str
    status: int
    headers: Message
    body: bytes


class ResponseTooLarge(ApiError):
    """An answer over ``MAX_BODY_BYTES``: refused, its connection dropped, retried later."""

    default_code = "response_too_large"


_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED = 9, 10
"""OpenSSL's verify codes for a certificate outside its validity at the local clock."""


def _clock_hint(exc: ssl.SSLCertVerificationError) -> str:
    """A certificate "not yet valid" or "expired" is most often the device's clock, not
    the server: say what the clock reads, since certificates tolerate only 2 hours."""
    if exc.verify_code not in (_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED):
        return ""
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        f" (this device's clock reads {now}; certificates allow "
        f"{CLOCK_TOLERANCE_S // 3600:g} hours of skew: set the clock with NTP or the RTC)"
    )


class Channel:
    """One persistent HTTPS connection to one server, reopened when the server closed it.

    Not thread-safe: the daemon makes one call at a time. ``timeout`` bounds
    every socket read (as httpx's read timeout did); connecting (TCP and the
    TLS handshake) gets at most ``MAX_CONNECT_TIMEOUT_S``.
    """

    def __init__(self, url: ControllerURL, context: ssl.SSLContext, timeout: float) -> None:
        self.url = url
        self.context = context
        self.timeout = timeout
        self.connect_timeout = min(timeout, MAX_CONNECT_TIMEOUT_S)
        self.connections = 0
        """Connections opened so far (a fresh one after every close)."""
        self._conn: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(
            self.url.host, self.url.port, timeout=self.connect_timeout, context=self.context
        )
        self._conn = conn
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self.timeout)
        self.connections += 1
        return conn

    def _reusable(self) -> http.client.HTTPSConnection | None:
        """The kept-alive connection, unless the server has visibly closed it while idle.

        An idle connection with something to read has had a FIN, a reset or a
        TLS close_notify: dropping it here avoids a resend in the common case;
        the retry in :meth:`exchange` covers a close that races the request.
        """
        conn = self._conn
        if conn is None or conn.sock is None:  # http.client drops sock after Connection: close
            self.close()
            return None
        try:
            readable, _, _ = select.select([conn.sock], [], [], 0)
        except (OSError, ValueError):
            readable = [conn.sock]
        if readable:
            log.debug("keep-alive connection to %s was closed by the server", self.url.host)
            self.close()
            return None
        return conn

    def exchange(
        self,
        method: str,
        path: str,
        body: Callable[[], bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read its whole answer, whatever its status.

        ``body`` is called for each attempt, so a resent request can differ (a
        token request needs a new assertion, with a new ``jti``). A request is
        resent at most once, and only when a reused connection turns out to
        have been closed by the server; every device call is safe to resend.
        ``timeout`` bounds this request's reads instead of the channel's (a long poll).
        """
        target = self.url.prefix + path
        for attempt in (1, 2):
            conn = self._reusable()
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._open()
                assert conn.sock is not None
                conn.sock.settimeout(timeout or self.timeout)
                payload = body() if body is not None else None
                conn.request(method, target, body=payload, headers=headers or {})
                resp = conn.getresponse()
                data = self._read_body(resp, method, target)
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise TrustError(
                    f"{self.url.host}:{self.url.port} failed verification against the "
                    f"pinned roots: {exc.verify_message or exc}{_clock_hint(exc)}"
                ) from exc
            except _STALE as exc:
                self.close()
                if reused and attempt == 1:
                    log.debug("%s %s: %r on a kept-alive connection; resending", method, path, exc)
                    continue
                raise Unreachable(f"{method} {target}: {type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise Unreachable(f"{method} {target}: {type(exc).__name__}: {exc}") from exc
            if resp.will_close:
                self.close()
            return Response(method, target, resp.status, resp.headers, data)
        raise AssertionError("unreachable: the loop returns or raises")

    def _read_body(self, resp: http.client.HTTPResponse, method: str, target: str) -> bytes:
        """The body, refusing (and dropping the connection) past ``MAX_BODY_BYTES``."""
        if resp.length is not None:  # Content-Length: refuse before reading a byte
            if resp.length > MAX_BODY_BYTES:
                self._too_large(method, target, resp.length)
            return resp.read()
        chunks, size = [], 0  # chunked, or until close: read in bounded steps
        while chunk := resp.read(_READ_CHUNK):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                self._too_large(method, target, size)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, method: str, target: str, size: int) -> None:
        self.close()
        raise ResponseTooLarge(
            f"the answer to {method} {target} is larger than {MAX_BODY_BYTES} bytes "
            f"({size}); refusing it"
        )


class ControllerClient:
    """Typed calls of the device API over one :class:`Channel` (keep-alive, pinned TLS)."""

    def __init__(
        self, base_url: str, verify: ssl.SSLContext, clock: Clock, timeout: float = 15.0
    ) -> None:
        self.base_url = base_url
        self.clock = clock
        self.channel = Channel(parse_controller_url(base_url), verify, timeout)
        self._headers = {
            "User-Agent": f"edgefleet-agent/{__version__}",
            "Accept": "application/json",
        }

    def close(self) -> None:
        self.channel.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: BaseModel | Callable[[], BaseModel] | None = None,
        headers: dict[str, str] | None = None,
        raw: Callable[[], bytes] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request; return a 2xx/304 answer or raise an Edgefleet error.

        ``json`` may be a callable that builds the model, called again if the
        request has to be resent; ``raw`` builds a body already encoded (its
        headers say how).
        """
        all_headers = {**self._headers, **(headers or {})}
        body: Callable[[], bytes] | None = raw
        if json is not None:
            all_headers["Content-Type"] = "application/json"
            model = json

            def encode() -> bytes:
                return (model() if callable(model) else model).model_dump_json().encode()

            body = encode
        resp = self.channel.exchange(method, API_PREFIX + path, body, all_headers, timeout)
        self.clock.observe(resp.headers.get("Date"), time.time())
        if 200 <= resp.status < 300 or resp.status == 304:
            return resp
        try:
            payload: Any = json_loads(resp.body)
        except ValueError:
            payload = None
        raise from_response_body(
            resp.status,
            payload,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
        )

    @staticmethod
    def _parse(resp: Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(resp.body)
        except ValidationError as exc:
            raise ApiError(
                f"the controller's answer to {resp.method} {resp.path} "
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

    def create_claim(self, req: ClaimRequest) -> ClaimCreated:
        """A QR claim for a device with no token (or the pending one of this key, with a
        new secret)."""
        return self._parse(self.request("POST", "/claims", json=req), ClaimCreated)

    def poll_claim(self, claim_id: str, secret: str, wait: float) -> ClaimStatus:
        """The claim's state; the controller holds the answer up to ``wait`` seconds while
        nobody has decided, so this request may read for that long."""
        resp = self.request(
            "GET",
            f"/claims/{claim_id}/poll?wait={wait:g}",
            headers={"Authorization": f"{CLAIM_SCHEME} {secret}"},
            timeout=wait + self.channel.timeout,
        )
        return self._parse(resp, ClaimStatus)

    def token(self, assertion: Callable[[], str]) -> AccessToken:
        """Trade an assertion for an access token.

        ``assertion`` builds a fresh one per attempt: the controller refuses a
        replayed ``jti``, so a resent request must not carry the same assertion.
        """

        def req() -> TokenRequest:
            return TokenRequest(client_assertion=assertion())

        return self._parse(self.request("POST", "/auth/token", json=req), AccessToken)

    def renew(self, device_id: str, request: Callable[[], RenewRequest]) -> EnrolResponse:
        """A new certificate for a new key; ``request`` builds a fresh proof per attempt."""
        return self._parse(
            self.request("POST", f"/devices/{device_id}/renew", json=request), EnrolResponse
        )

    def desired(
        self, device_id: str, token: str, etag: str | None
    ) -> tuple[DesiredState | None, str | None]:
        """The desired state and its ETag, or (None, etag) when it has not changed (304)."""
        headers = self._bearer(token)
        if etag:
            headers["If-None-Match"] = etag
        resp = self.request("GET", f"/devices/{device_id}/desired", headers=headers)
        if resp.status == 304:
            return None, etag
        return self._parse(resp, DesiredState), resp.headers.get("ETag")

    def registry_token(self, device_id: str, token: str, scopes: list[str]) -> RegistryToken:
        """A short-lived pull token for the registry, narrowed to ``scopes``
        (``repository:NAME:pull``); the controller grants only the desired models'."""
        query = urlencode([("scope", scope) for scope in scopes])
        path = f"/devices/{device_id}/registry-token" + (f"?{query}" if query else "")
        resp = self.request("GET", path, headers=self._bearer(token))
        return self._parse(resp, RegistryToken)

    def status(self, device_id: str, token: str, report: StatusReport) -> StatusAck:
        resp = self.request(
            "POST", f"/devices/{device_id}/status", json=report, headers=self._bearer(token)
        )
        return self._parse(resp, StatusAck)

    def upload_results(self, device_id: str, token: str, body: Callable[[], bytes]) -> ResultAck:
        """One gzipped ResultBatch (``body`` builds it per attempt, with fresh clocks)."""
        headers = {
            **self._bearer(token),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        resp = self.request("POST", f"/devices/{device_id}/results", raw=body, headers=headers)
        return self._parse(resp, ResultAck)

    def report_update(self, device_id: str, token: str, report: UpdateReport) -> UpdateAck:
        """Upload one update attempt's outcome and evidence; safe to send again."""
        resp = self.request(
            "POST", f"/devices/{device_id}/updates", json=report, headers=self._bearer(token)
        )
        return self._parse(resp, UpdateAck)
