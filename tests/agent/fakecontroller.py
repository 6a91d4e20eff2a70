"""FakeController: a TEST DOUBLE of the controller's device API, for the agent's unit tests.

It is not the controller (that lives in ``controller/`` and has its own
end-to-end tests against real agents). It implements just enough of the
device API in DESIGN.md, over real HTTPS on 127.0.0.1 with a real test CA, to
exercise the agent: the pinned chain, idempotent enrolment by key, approval,
rejection, ES256 assertions checked against the issued certificate, bearer
tokens, desired state with ETags and 304, status acks. Tests steer it through
plain attributes and :meth:`fail_next`, and read what arrived in
:attr:`requests`.

The socket is bound to port 0 at construction and only listens on
:meth:`start`, so a test can hand the port to an agent while the
"controller is down" (connections are refused) with no free-port race.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509

from edgefleet.signing import spki_pin
from edgefleet.wire import (
    API_PREFIX,
    DesiredState,
    EnrolRequest,
    StatusReport,
    TokenRequest,
)
from tests.agent.pki import TestPKI


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Fault:
    method: str
    path_prefix: str
    status: int
    body: Any
    headers: dict[str, str]
    count: int


@dataclass
class Device:
    device_id: str
    public_key: Any
    polls_before_approval: int
    desired: DesiredState
    decommissioned: bool = False
    statuses: list[StatusReport] = field(default_factory=list)


def _etag(desired: DesiredState) -> str:
    digest = hashlib.sha256(desired.model_dump_json().encode()).hexdigest()[:20]
    return f'"{digest}"'


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeController, port: int) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", port), _Handler, bind_and_activate=False)

    def finish_request(self, request, client_address) -> None:
        try:
            tls = self.fake.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the agent refused our certificate, or the proxy cut the line
        with self.fake.lock:
            self.fake.connections += 1
            self.fake._open.add(tls)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            with self.fake.lock:
                self.fake._open.discard(tls)
            tls.close()

    def handle_error(self, request, client_address) -> None:
        pass  # connections cut by tests are expected; keep test output clean


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(time.time() + self.server.fake.date_offset, usegmt=True)

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        raw = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        self.send_response(status)
        if body is not None:
            ctype = "application/x-pem-file" if isinstance(body, bytes) else "application/json"
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = self.path
        with fake.lock:
            fake.requests.append(Seen(method, path, dict(self.headers), body, time.time()))
            fault = fake._take_fault(method, path)
        if fault is not None and fault.status == DROP:
            self.close_connection = True  # read, never answered: the line went dead
            return
        if fault is not None:
            self._send(fault.status, fault.body, fault.headers)
            return
        try:
            status, out, headers = fake.handle(method, path, dict(self.headers), body)
        except Exception as exc:  # a bug in the fake must show in the test, not hang it
            status, out, headers = 500, {"error": {"code": "fake_bug", "message": repr(exc)}}, {}
        self._send(status, out, headers)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


DROP = 0
"""A fault "status": close the connection after reading the request, answering nothing."""


def _error(status: int, code: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"code": code, "message": message}}, {}


class FakeController:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    controller_id = "fake-controller"

    def __init__(self, tmp: Path, pki: TestPKI | None = None, port: int = 0) -> None:
        self.pki = pki or TestPKI()
        cert, key = self.pki.server_files(tmp)
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.load_cert_chain(cert, key)
        self.lock = threading.Lock()
        self.requests: list[Seen] = []
        self.connections = 0
        """TLS connections accepted so far (keep-alive reuses one)."""
        self._open: set[ssl.SSLSocket] = set()
        self.assertions: list[dict[str, Any]] = []
        """Decoded assertion claims, with ``_server_now`` (the fake's own clock)."""
        self.devices: dict[str, Device] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.valid_tokens = {"good-token"}
        self.date_offset = 0.0
        self.interval_seconds = 30
        self.token_ttl = 900
        self.polls_before_approval = 0
        self.approval_retry_after = 1
        self.reject = False
        self.chain_bundle = self.pki.chain_bundle()
        self._faults: list[Fault] = []
        self._httpd = _Server(self, port)
        self._httpd.server_bind()
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FakeController:
        self._httpd.server_activate()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def registration(self, pins: list[str] | None = None, token: str = "good-token") -> dict:
        return {
            "controller_url": self.url,
            "controller_id": self.controller_id,
            "root_pins": pins or [self.pki.pin],
            "token": token,
        }

    # -- steering -----------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        status: int,
        *,
        code: str = "fault",
        message: str = "injected by the test",
        headers: dict[str, str] | None = None,
        count: int = 1,
        body: bytes | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with this error (or raw ``body``)."""
        with self.lock:
            self._faults.append(
                Fault(
                    method,
                    API_PREFIX + path_prefix,
                    status,
                    body if body is not None else {"error": {"code": code, "message": message}},
                    headers or {},
                    count,
                )
            )

    def drop_next(self, method: str, path_prefix: str, count: int = 1) -> None:
        """Read the next ``count`` matching requests, then close their connection unanswered.

        On a kept-alive connection this is the race a client must survive: the
        server closed it just as the request went out.
        """
        self.fail_next(method, path_prefix, DROP, count=count)

    def close_connections(self) -> None:
        """Close every open connection, as a server's keep-alive idle timeout does."""
        with self.lock:
            conns = list(self._open)
        for tls in conns:
            with contextlib.suppress(OSError):  # TCP level; the TLS object is left alone
                socket.socket.shutdown(tls, socket.SHUT_RDWR)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for f in self._faults:
            if f.count > 0 and f.method == method and path.startswith(f.path_prefix):
                f.count -= 1
                return f
        return None

    def set_desired(self, device_id: str, **changes: Any) -> str:
        """Change a device's desired state; return its new ETag."""
        with self.lock:
            dev = self.devices[device_id]
            dev.desired = dev.desired.model_copy(update=changes)
            return _etag(dev.desired)

    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests if method is None or r.method == method]

    def count(self, method: str, path_suffix: str) -> int:
        with self.lock:
            return sum(
                1 for r in self.requests if r.method == method and r.path.endswith(path_suffix)
            )

    # -- the device API ---------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any):
        if not path.startswith(API_PREFIX):
            return _error(404, "not_found", path)
        rest = path[len(API_PREFIX) :]
        if method == "GET" and rest == "/pki/chain":
            return 200, self.chain_bundle.encode(), {}
        if method == "POST" and rest == "/enrol":
            return self._enrol(EnrolRequest.model_validate(body))
        if method == "POST" and rest == "/auth/token":
            return self._token(TokenRequest.model_validate(body))
        parts = rest.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "devices":
            device_id, what = parts[1], parts[2]
            with self.lock:
                dev = self.devices.get(device_id)
            denied = self._check_bearer(headers, device_id, dev)
            if denied:
                return denied
            assert dev is not None
            if method == "GET" and what == "desired":
                etag = _etag(dev.desired)
                if headers.get("If-None-Match") == etag:
                    return 304, None, {"ETag": etag}
                return 200, dev.desired.model_dump(mode="json"), {"ETag": etag}
            if method == "POST" and what == "status":
                report = StatusReport.model_validate(body)
                with self.lock:
                    dev.statuses.append(report)
                ack = {
                    "state": "ready",
                    "desired_etag": _etag(dev.desired),
                    "interval_seconds": self.interval_seconds,
                }
                return 200, ack, {}
        return _error(404, "not_found", f"no route {method} {path}")

    def _enrol(self, req: EnrolRequest):
        if req.token not in self.valid_tokens:
            return _error(401, "invalid_token", "registration token is not valid")
        if self.reject:
            return _error(403, "rejected", "an operator rejected this device")
        public_key = x509.load_pem_x509_csr(req.csr.encode()).public_key()
        device_id = "dev-" + spki_pin(public_key)[7:19]
        with self.lock:
            dev = self.devices.get(device_id)
            if dev is None:
                dev = Device(
                    device_id,
                    public_key,
                    self.polls_before_approval,
                    DesiredState(device_id=device_id, interval_seconds=self.interval_seconds),
                )
                self.devices[device_id] = dev
            if dev.polls_before_approval > 0:
                dev.polls_before_approval -= 1
                return (
                    202,
                    {
                        "device_id": device_id,
                        "state": "awaiting_approval",
                        "interval_seconds": self.interval_seconds,
                        "retry_after_seconds": self.approval_retry_after,
                    },
                    {},
                )
        return (
            200,
            {
                "device_id": device_id,
                "state": "enrolled",
                "certificate_chain": self.pki.sign_device(req.csr, device_id),
                "trust_bundle": [self.pki.root.pem],
                "profile": "default",
                "interval_seconds": self.interval_seconds,
            },
            {},
        )

    def _token(self, req: TokenRequest):
        unverified = jwt.decode(req.client_assertion, options={"verify_signature": False})
        with self.lock:
            dev = self.devices.get(unverified.get("sub", ""))
        if dev is None:
            return _error(401, "unknown_device", "no such device")
        if dev.decommissioned:
            return _error(403, "device_decommissioned", "this device was decommissioned")
        server_now = time.time() + self.date_offset
        try:
            claims = jwt.decode(
                req.client_assertion,
                dev.public_key,
                algorithms=["ES256"],
                audience=self.controller_id,
                options={"verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as exc:
            return _error(401, "bad_assertion", str(exc))
        claims["_server_now"] = server_now
        token = secrets.token_urlsafe(16)
        with self.lock:
            self.assertions.append(claims)
            self.tokens[token] = (dev.device_id, time.monotonic() + self.token_ttl)
        return 200, {"access_token": token, "expires_in": self.token_ttl}, {}

    def revoke_tokens(self) -> None:
        """Forget every access token, as a restarted controller with a new key would."""
        with self.lock:
            self.tokens.clear()

    def decommission(self, device_id: str) -> None:
        with self.lock:
            self.devices[device_id].decommissioned = True

    def _check_bearer(self, headers: dict[str, str], device_id: str, dev: Device | None):
        auth = headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        with self.lock:
            held = self.tokens.get(token)
        if not auth.startswith("Bearer ") or held is None or held[1] < time.monotonic():
            return _error(401, "unauthorized", "access token missing, unknown or expired")
        if dev is None or held[0] != device_id:
            return _error(403, "forbidden", "a device reaches only its own resources")
        if dev.decommissioned:
            return _error(403, "device_decommissioned", "this device was decommissioned")
        return None
