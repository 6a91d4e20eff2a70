"""The runner's HTTP API on a Unix socket (and, if asked, a loopback port).

The standard library's ``http.server`` with one thread per connection: HTTP/1.1
keep-alive and one ``send`` per answer keep its overhead a fraction of a
millisecond per call (``bench/runner.py``), which no framework would beat by
enough to pay for its memory. Nothing a caller sends can stop the process: a bad
request gets a 4xx, a failing inference a 500, a failing result store a counter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.results import ResultStore
from edgefleet.agent.runner import api, inputs
from edgefleet.agent.runner.drift import DriftMonitor
from edgefleet.agent.runner.model import InferenceError, Model
from edgefleet.percentile import percentile

if TYPE_CHECKING:  # loaded only by a runner given a candidate
    from edgefleet.agent.runner.shadow import Shadow

log = logging.getLogger("edgefleet.runner")

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest request read: a batch of camera frames as JSON fits, a runaway client does not."""

IDLE_TIMEOUT_S = 120.0
"""A kept-alive connection idle this long is closed, so idle clients do not hold threads."""

SUN_PATH_MAX = 107
"""Longest Unix socket path Linux takes (108 bytes with the terminating NUL)."""

LATENCY_WINDOW = 1000
"""Answered calls whose latencies make the p95 in ``/health``: recent enough that a
slower model shows within minutes, few enough to sort at each ``/health``."""


class Service:
    """What the endpoints answer, apart from HTTP: the model, the store, the counters."""

    def __init__(
        self,
        model: Model,
        store: ResultStore,
        window: int = LATENCY_WINDOW,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.drift = drift
        self.shadow: Shadow | None = None
        """Set once the candidate is loaded (after the socket serves)."""
        self.shadow_refused: api.ShadowHealth | None = None
        """The candidate the runner was given and refused, for ``/health``."""
        self.port: int | None = None
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._calls = 0
        self._errors = 0
        self._store_errors = 0
        self._last_store_error: str | None = None
        self._latencies: deque[float] = deque(maxlen=window)

    def predict(self, body: bytes) -> api.Prediction:
        """Raises InputError or InferenceError (counted); a store failure is only counted."""
        answer, after = self.answer(body)
        if after is not None:
            after()
        return answer

    def answer(self, body: bytes) -> tuple[api.Prediction, Callable[[], None] | None]:
        """The prediction, and what to do once the caller has it (hand the call to the
        shadow candidate): the HTTP handler writes the answer first."""
        with self._lock:
            self._calls += 1
        try:
            arrays = inputs.parse(body, self.model.inputs)
            values, latency_ms = self.model.run_arrays(arrays)
        except (inputs.InputError, InferenceError):
            with self._lock:
                self._errors += 1
            raise
        with self._lock:
            self._latencies.append(latency_ms)
        if self.drift is not None:
            self.drift.update(arrays, values)
        outputs = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in values.items()}
        self._record(arrays, outputs, latency_ms)
        answer = api.Prediction(outputs=outputs, model=self.model.ref, latency_ms=latency_ms)
        shadow = self.shadow
        if shadow is None:
            return answer, None
        return answer, lambda: shadow.offer(arrays, values, latency_ms)

    def _record(self, arrays: dict[str, Any], outputs: dict[str, object], latency: float) -> None:
        record = {
            "ts": time.time(),
            "model": self.model.ref,
            "inputs_sha256": inputs.digest(arrays),
            "outputs": outputs,
            "latency_ms": latency,
        }
        try:
            self.store.append(record)
        except Exception as exc:  # any store, any failure: the caller still gets its answer
            message = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._store_errors += 1
                first = self._last_store_error != message
                self._last_store_error = message
            if first:
                log.warning("result store failed (answering anyway, counted): %s", message)

    def health(self) -> api.Health:
        shadow = self.shadow.health() if self.shadow is not None else self.shadow_refused
        with self._lock:
            health = api.Health(
                loaded=True,
                model=self.model.ref,
                uptime_s=round(time.monotonic() - self._started, 3),
                calls=self._calls,
                errors=self._errors,
                p95_ms=percentile_95(self._latencies),
                store_errors=self._store_errors,
                last_store_error=self._last_store_error,
                port=self.port,
                pid=os.getpid(),
            )
        if shadow is not None:
            health["shadow"] = shadow
        return health


def percentile_95(latencies: Collection[float]) -> float | None:
    """To the microsecond; None without calls."""
    return round(percentile(latencies, 95), 3) if latencies else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "edgefleet-runner"
    wbufsize = -1  # headers and body leave in one send, flushed after each answer
    timeout = IDLE_TIMEOUT_S

    @property
    def service(self) -> Service:
        return self.server.service  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        if self.path == api.HEALTH:
            self._answer(200, self.service.health())
        elif self.path == api.MODEL:
            self._answer(200, self.service.model.info())
        elif self.path == api.PREDICT:
            self._error(405, "method_not_allowed", f"use POST {api.PREDICT}")
        else:
            self._not_found()

    def do_POST(self) -> None:
        if self.path != api.PREDICT:
            if self.path in (api.HEALTH, api.MODEL):
                self._error(405, "method_not_allowed", f"use GET {self.path}", close=True)
            else:
                self._not_found(close=True)
            return
        body = self._body()
        if body is None:
            return
        try:
            answer, after = self.service.answer(body)
        except inputs.InputError as exc:
            self._error(400, "bad_input", str(exc))
            return
        except InferenceError as exc:
            log.warning("%s", exc)
            self._error(500, "inference_failed", str(exc))
            return
        self._answer(200, answer)
        if after is not None:
            self.wfile.flush()  # the caller has its answer before the candidate's turn
            after()

    def _body(self) -> bytes | None:
        """The request body, or None after answering why it cannot be read."""
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(411, "length_required", "send the body with a Content-Length", close=True)
            return None
        try:
            size = int(length)
        except ValueError:
            self._error(
                400, "bad_request", f"Content-Length {length!r} is not a number", close=True
            )
            return None
        if size < 0 or size > MAX_BODY_BYTES:
            self._error(
                413,
                "payload_too_large",
                f"the body may be at most {MAX_BODY_BYTES} bytes",
                close=True,
            )
            return None
        return self.rfile.read(size)

    def _not_found(self, close: bool = False) -> None:
        routes = f"POST {api.PREDICT}, GET {api.HEALTH}, GET {api.MODEL}"
        self._error(404, "not_found", f"no such endpoint {self.path}; try {routes}", close)

    def _error(self, status: int, code: str, message: str, close: bool = False) -> None:
        """``close`` when the request body was not read, so it cannot be taken for the next."""
        if close:
            self.close_connection = True
        self._answer(status, {"error": {"code": code, "message": message}})

    def _answer(self, status: int, doc: Any) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "local" if isinstance(self.client_address, str) else self.client_address[0]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class TCPHandler(Handler):
    disable_nagle_algorithm = True  # TCP only: the option does not exist on a Unix socket


DRAIN_S = 2.0
"""The longest a stopping runner waits for the calls in progress to be answered."""


class Draining:
    """The connections a server has open, so that a stopping runner can let its
    kept-alive callers go before the process ends (see ``drain``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def drain(self, timeout: float = DRAIN_S) -> None:
        """Stop reading from every open connection: an idle one ends at once (its caller
        sees it closed and connects again, to whichever runner serves the socket now),
        one in the middle of a call answers it first. Waits up to ``timeout`` for them."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._conns_lock:
                if not self._conns:
                    return
            time.sleep(0.005)


class UnixServer(Draining, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    service: Service
    inode: int
    """The socket file's, to leave alone a file another runner put there since."""


class TCPServer(Draining, ThreadingHTTPServer):
    service: Service


class SetupError(Exception):
    """A socket, port or folder the runner was told to use cannot be used; says why."""


def bind_unix(path: Path, service: Service, take_over: bool = False) -> UnixServer:
    """Listen on ``path`` (mode 0600), replacing a socket left by a runner that died.

    With ``take_over`` the socket is bound beside ``path`` and renamed over it, which
    replaces the socket of a runner still serving: new connections reach this runner
    at once, and the supervisor stops the old one once this one answers, so callers
    see no time without a listener."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise SetupError(
            f"socket path {path} is longer than {SUN_PATH_MAX} bytes; use a shorter one"
        )
    target = path
    if take_over:
        path = path.with_name(f"{path.name}.{os.getpid()}")
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise SetupError(
                f"socket path {path} (taking over {target}) is longer than {SUN_PATH_MAX} "
                "bytes; use a shorter socket folder"
            )
        path.unlink(missing_ok=True)
    else:
        _remove_stale(path)
    previous = os.umask(0o177)
    try:
        server = UnixServer(str(path), Handler)
        if take_over:
            os.rename(path, target)
    except OSError as exc:
        if take_over:
            path.unlink(missing_ok=True)
        raise SetupError(f"cannot listen on {target}: {exc.strerror or exc}") from exc
    finally:
        os.umask(previous)
    server.service = service
    server.inode = target.stat().st_ino
    return server


def release(path: Path, server: UnixServer) -> None:
    """Remove the socket file, unless a runner that took over has it now."""
    try:
        if path.stat().st_ino == server.inode:
            path.unlink()
    except FileNotFoundError:
        pass


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SetupError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # nobody listens: left by a runner that died
            return
    raise SetupError(f"another process is serving {path}; stop it or use another socket path")


def bind_tcp(port: int, service: Service) -> TCPServer:
    """Listen on 127.0.0.1 only: the API has no authentication, so it never leaves the host."""
    try:
        server = TCPServer(("127.0.0.1", port), TCPHandler)
    except OSError as exc:
        raise SetupError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from exc
    server.service = service
    service.port = server.server_address[1]
    return server


@contextlib.contextmanager
def serving(servers: list[socketserver.BaseServer], socket_path: Path) -> Iterator[None]:
    """Serve in background threads for the duration of the block, then close every
    listener and remove the socket file (``servers[0]``'s, unless taken over since)."""
    # serve_forever polls for shutdown every 0.5 s by default: a commit's takeover of the
    # main socket waits for that poll, so a shorter one shortens the gap callers see.
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        for s in servers
    ]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        for s in servers:
            if isinstance(s, Draining):
                s.drain()
        unix = servers[0]
        assert isinstance(unix, UnixServer)
        release(socket_path, unix)
