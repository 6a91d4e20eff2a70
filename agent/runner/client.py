"""Calls of the runner's API over its Unix socket, standard library only.

One kept-alive HTTP/1.1 connection, so a call costs a request and an answer,
not a connect. Calls from several threads take turns on it: the agent makes few;
an application that needs concurrency talks to the socket itself.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.agent.runner import api
from edgefleet.agent.runner.errors import RunnerError, RunnerUnavailable
from edgefleet.errors import from_response_body

_UNREAD = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
"""How a request sent on a connection the runner had already closed fails."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket: only ``connect`` differs."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class RunnerClient:
    """The runner's three endpoints as typed calls; errors as :mod:`.errors` describes."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._conn: UnixHTTPConnection | None = None
        self._lock = threading.Lock()

    def predict(self, inputs: Mapping[str, Any]) -> api.Prediction:
        body = json.dumps({"inputs": inputs}, separators=(",", ":")).encode()
        return self._call("POST", api.PREDICT, body)

    def health(self) -> api.Health:
        return self._call("GET", api.HEALTH)

    def model_info(self) -> api.ModelInfo:
        return self._call("GET", api.MODEL)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> UnixHTTPConnection:
        """The kept-alive connection, or a new one if the runner closed it (idle timeout,
        or the process died and a new one took the socket): its end reads as EOF."""
        conn = self._conn
        if conn is not None and conn.sock is not None:
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if not readable:
                return conn
        self._close()
        self._conn = UnixHTTPConnection(self.socket_path, self.timeout)
        return self._conn

    def _call(self, method: str, path: str, body: bytes | None = None) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                reused = conn.sock is not None
                try:
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (OSError, http.client.HTTPException) as exc:
                    self._close()
                    if attempt == 1 and reused and isinstance(exc, _UNREAD):
                        # A kept-alive connection that a stopping runner closed as this
                        # request left: it was never read (a runner answers every call it
                        # read before it stops), so it goes again on a new connection.
                        continue
                    raise RunnerUnavailable(
                        f"no answer from the inference runner on {self.socket_path} "
                        f"({method} {path}): {type(exc).__name__}: {exc}"
                    ) from exc
            if resp.will_close:
                self._close()
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise RunnerError(
                f"the inference runner answered {method} {path} with non-JSON"
            ) from exc
        if resp.status != 200:
            raise from_response_body(resp.status, doc)
        return doc
