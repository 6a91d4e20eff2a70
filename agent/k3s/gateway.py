"""The runner's Service port: HTTP on the pod's network, forwarded to the model runners'
Unix sockets.

Each model's runner listens only on ``<socket dir>/<name>.sock`` (its API has no
authentication); in K3s mode the agent relays ``/models/<name>/<endpoint>`` from
``0.0.0.0:<service_port>`` to it, so applications in the cluster reach the runner through
the ``edgefleet-runner`` Service, and the chart's NetworkPolicy decides who may. An A/B
commit stops a model's runner and starts the new one on the same socket; a call that
meets that gap is retried for up to ``wait_s`` seconds, so a handover costs callers
time, not a failed call.

Standard library only, like the runner's client: the idle daemon keeps its memory budget.

    GET       /models                       -> ["name", ...] (main sockets, not candidates)
    GET|POST  /models/<name>/predict|health|model  -> the runner's own answer
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import select
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgefleet.agent.runner import api
from edgefleet.agent.runner.client import UnixHTTPConnection
from edgefleet.errors import EdgefleetError

log = logging.getLogger("edgefleet.agent")

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The runner's own limit (``runner/server.py``, which imports onnxruntime and so is not
imported here; the tests check both are equal): refused here before anything is relayed."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A model name as the model set allows it (``update/modelset.py``; the tests check)."""
SOCKET_SUFFIX = ".sock"
CANDIDATE_SUFFIX = ".next.sock"
"""A candidate runner's socket (``update/switch.py``): health checks only, never relayed."""
ENDPOINTS = (api.PREDICT, api.HEALTH, api.MODEL)
WAIT_S = 2.0
"""How long a call waits for a model's runner that does not answer (a handover is well
under a second) before the caller gets 503 and Retry-After."""
FORGET_S = 10.0
"""A model whose socket has been gone this long was removed from the set: 404, not 503."""
IDLE_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0
_RETRY_EVERY_S = 0.02


class GatewayError(EdgefleetError):
    """The gateway cannot listen; the message says on what and what to change."""

    default_code = "gateway"


class _Unavailable(Exception):
    """No answer from the runner yet: retried until the deadline."""


class Gateway:
    """The HTTP server and its thread; :meth:`start` binds, :meth:`close` stops."""

    def __init__(
        self,
        socket_dir: Path,
        port: int,
        host: str = "0.0.0.0",
        wait_s: float = WAIT_S,
        call_timeout: float = CALL_TIMEOUT_S,
    ) -> None:
        self.socket_dir = socket_dir
        self.host = host
        self.port = port
        self.wait_s = wait_s
        self.call_timeout = call_timeout
        self._seen: dict[str, float] = {}
        """Model name -> when its socket was last found (monotonic)."""
        self._server: _Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port chosen when ``port`` was 0)."""
        if self._server is None:
            raise GatewayError("the gateway is not listening; call start() first")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen and serve in a daemon thread; a no-op if listening. Raises GatewayError."""
        if self._server is not None:
            return
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise GatewayError(
                f"cannot listen on {self.host}:{self.port} for the runner's Service: "
                f"{exc.strerror or exc}; free the port or change EDGEFLEET_AGENT_SERVICE_PORT "
                "(the chart's runnerService.port)"
            ) from exc
        server.gateway = self
        self._server = server
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="runner-gateway",
            daemon=True,
        ).start()
        log.info("runner gateway on %s:%d relays to %s", *self.address, self.socket_dir)

    def close(self) -> None:
        """Stop listening; connections being answered finish on their daemon threads."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # -- what it answers ----------------------------------------------------------

    def models(self) -> list[str]:
        """Models served on their main sockets, by name."""
        try:
            entries = list(self.socket_dir.iterdir())
        except OSError:
            return []
        found = sorted(
            p.name.removesuffix(SOCKET_SUFFIX)
            for p in entries
            if p.name.endswith(SOCKET_SUFFIX) and not p.name.endswith(CANDIDATE_SUFFIX)
        )
        now = time.monotonic()
        for name in found:
            self._seen[name] = now
        return [n for n in found if valid_name(n)]

    def known(self, name: str) -> bool:
        """Served now, or served until moments ago (its runner is being replaced)."""
        if self.socket(name).exists():
            self._seen[name] = time.monotonic()
            return True
        seen = self._seen.get(name)
        return seen is not None and time.monotonic() - seen < FORGET_S

    def socket(self, name: str) -> Path:
        return self.socket_dir / f"{name}{SOCKET_SUFFIX}"


def valid_name(name: str) -> bool:
    """A model set's name that is not a candidate's (``x.next`` would reach ``x``'s)."""
    return bool(NAME.match(name)) and not f"{name}{SOCKET_SUFFIX}".endswith(CANDIDATE_SUFFIX)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    gateway: Gateway


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "edgefleet-runner-gateway"
    wbufsize = -1  # headers and body in one send
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self._upstream: dict[str, UnixHTTPConnection] = {}
        """One kept-alive runner connection per model, for this client connection."""

    def finish(self) -> None:
        for conn in self._upstream.values():
            conn.close()
        super().finish()

    @property
    def gateway(self) -> Gateway:
        return self.server.gateway  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _refuse_method(self) -> None:
        self._error(405, "method_not_allowed", "use GET or POST (see GET /models)", True)

    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse_method

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        if path == "/models" and method == "GET":
            self._discard_body()
            self._answer(200, self.gateway.models())
            return
        parts = path.split("/")  # "", "models", name, endpoint
        if len(parts) != 4 or parts[1] != "models" or f"/{parts[3]}" not in ENDPOINTS:
            self._error(
                404,
                "not_found",
                f"no such endpoint {path[:200]}; try GET /models, POST /models/<name>/predict, "
                "GET /models/<name>/health or /models/<name>/model",
                close=True,
            )
            return
        name = parts[2]
        if not valid_name(name) or not self.gateway.known(name):
            served = self.gateway.models()
            listed = ", ".join(served) if served else "none yet (starting, or no model assigned)"
            self._error(
                404, "not_found", f"no model {name[:80]!r} is served here; served: {listed}", True
            )
            return
        body = self._body() if method == "POST" else self._discard_body()
        if body is None and method == "POST":
            return
        self._relay(name, method, f"/{parts[3]}", body)

    # -- the runner --------------------------------------------------------------

    def _relay(self, name: str, method: str, path: str, body: bytes | None) -> None:
        deadline = time.monotonic() + self.gateway.wait_s
        headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
        last = ""
        while True:
            try:
                status, content_type, data = self._call(name, method, path, body, headers)
                break
            except _Unavailable as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                sock = self.gateway.socket(name)
                self._error(
                    503,
                    "runner_unavailable",
                    f"the runner of model {name!r} did not answer on {sock} within "
                    f"{self.gateway.wait_s:g} s ({last}); it is restarting or being replaced: "
                    f"retry, and if this lasts, read the agent's log and {sock}.log",
                    retry_after=1,
                )
                return
            time.sleep(_RETRY_EVERY_S)
        self._send(status, data, content_type)

    def _call(
        self, name: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        """One try; _Unavailable if no answer came. A call whose runner stopped before
        answering is sent again: the caller still gets one answer (the stopped runner
        may have recorded a result it never returned)."""
        conn = self._connection(name)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._upstream.pop(name, None)
            raise _Unavailable(f"{type(exc).__name__}: {exc}") from exc
        if resp.will_close:
            conn.close()
            self._upstream.pop(name, None)
        return resp.status, resp.getheader("Content-Type", "application/json"), data

    def _connection(self, name: str) -> UnixHTTPConnection:
        """The kept-alive one unless the runner closed it (its end reads as EOF)."""
        conn = self._upstream.get(name)
        if conn is not None and conn.sock is not None:
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if not readable:
                return conn
            conn.close()
        conn = UnixHTTPConnection(self.gateway.socket(name), self.gateway.call_timeout)
        self._upstream[name] = conn
        return conn

    # -- the caller ----------------------------------------------------------------

    def _body(self) -> bytes | None:
        """The request body, or None after answering why it cannot be read."""
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(411, "length_required", "send the body with a Content-Length", True)
            return None
        try:
            size = int(length)
        except ValueError:
            self._error(400, "bad_request", f"Content-Length {length!r} is not a number", True)
            return None
        if size < 0 or size > MAX_BODY_BYTES:
            self._error(
                413, "payload_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes", True
            )
            return None
        return self.rfile.read(size)

    def _discard_body(self) -> None:
        """A GET's body is not relayed, but read, so it is not taken for the next request."""
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            return None
        self.rfile.read(int(length))
        return None

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        close: bool = False,
        retry_after: int | None = None,
    ) -> None:
        """``close`` when the request body may not have been read."""
        if close:
            self.close_connection = True
        extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self._answer(status, {"error": {"code": code, "message": message}}, extra)

    def _answer(self, status: int, doc: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc, separators=(",", ":")).encode(), "", extra)

    def _send(
        self,
        status: int,
        data: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type or "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("gateway %s %s", self.client_address[0], format % args)
