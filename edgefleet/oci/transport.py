"""HTTP to one registry over ``http.client``: keep-alive connections, streamed answers.

Standard library only, because the device agent pulls through it and httpx costs the
daemon memory its budget does not have. Tests and the agent may hand the client another
:class:`Transport` (a mirror, a proxy in front of the registry).
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from edgefleet.oci.errors import BadReference, RegistryUnreachable

BLOCK = 1 << 20
"""Socket reads and body writes in 1 MiB pieces: http.client's 8 KiB default costs a
model pull a large share of its time in Python calls."""


@dataclass(frozen=True)
class Endpoint:
    """Where a registry listens, and how to trust it."""

    scheme: str
    host: str
    """``host[:port]``."""
    ca_file: Path | None = None
    verify_tls: bool = True
    timeout: float = 60.0

    @classmethod
    def parse(
        cls,
        registry: str,
        *,
        plain_http: bool = False,
        ca_file: Path | None = None,
        verify_tls: bool = True,
        timeout: float = 60.0,
    ) -> Endpoint:
        """``host[:port]`` (https unless ``plain_http``) or a ``http(s)://host[:port]`` URL."""
        if "://" in registry:
            parts = urlsplit(registry)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise BadReference(
                    f"registry {registry!r}: write host[:port], http://host[:port] or "
                    "https://host[:port]"
                )
            if parts.path.strip("/"):
                raise BadReference(
                    f"registry {registry!r}: give the registry's address without a path"
                )
            return cls(parts.scheme, parts.netloc, ca_file, verify_tls, timeout)
        return cls(
            "http" if plain_http else "https", registry.strip("/"), ca_file, verify_tls, timeout
        )

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"


@dataclass(frozen=True)
class FileBody:
    """``length`` bytes of a file from ``offset``: re-readable, so a request can be retried."""

    path: Path
    offset: int
    length: int

    def open(self) -> _Slice:
        return _Slice(self.path, self.offset, self.length)


class _Slice:
    """A read-only window of a file, as http.client reads a body (``read(n)``)."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._f = path.open("rb")
        self._f.seek(offset)
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


Body = bytes | FileBody | None


class Response:
    """A streamed answer; read it whole, in pieces, or not at all, then close it."""

    def __init__(
        self,
        raw: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        transport: Transport,
        step: str,
    ) -> None:
        self.status = raw.status
        self.headers: Message = raw.headers
        self._raw, self._conn, self._transport, self._step = raw, conn, transport, step

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def read(self) -> bytes:
        try:
            data = self._raw.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise RegistryUnreachable(f"{self._step}: the answer broke off: {exc}") from exc
        self.close()
        return data

    def chunks(self, size: int = BLOCK) -> Iterator[memoryview]:
        """The body in pieces; a connection cut mid-body raises RegistryUnreachable."""
        buf = bytearray(size)
        view = memoryview(buf)
        while True:
            try:
                n = self._raw.readinto(buf)
            except (OSError, http.client.HTTPException) as exc:
                self._conn.close()
                raise RegistryUnreachable(f"{self._step}: the download broke off: {exc}") from exc
            if not n:
                break
            yield view[:n]
        length = self._raw.length
        if length:  # readinto returns 0 on a connection closed before Content-Length
            self._conn.close()
            raise RegistryUnreachable(f"{self._step}: the download broke off {length} bytes short")

    def close(self) -> None:
        """Give the connection back for the next request if the answer was read whole."""
        if self._raw.isclosed() and not self._raw.will_close:
            self._transport._release(self._conn)
        else:
            self._raw.close()
            self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Transport:
    """Keep-alive connections to one endpoint, safe to share between threads."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            self._tls = ssl.create_default_context(
                cafile=str(endpoint.ca_file) if endpoint.ca_file else None
            )
            if not endpoint.verify_tls:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE

    def request(
        self, method: str, target: str, headers: dict[str, str], body: Body, step: str
    ) -> Response:
        """Send one request (``target`` is a path with its query); retry once on a kept-alive
        connection the server had already closed."""
        for attempt in (0, 1):
            conn, reused = self._acquire()
            try:
                self._send(conn, method, target, headers, body)
                raw = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise RegistryUnreachable(
                    f"{step}: cannot reach the registry at {self.endpoint.base_url}: {exc}"
                ) from exc
            return Response(raw, conn, self, step)
        raise AssertionError("unreachable")

    def _send(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: Body,
    ) -> None:
        if isinstance(body, FileBody):
            stream = body.open()
            try:
                conn.request(
                    method,
                    target,
                    body=stream,
                    headers={**headers, "Content-Length": str(body.length)},
                )
            finally:
                stream.close()
        else:
            conn.request(method, target, body=body, headers=headers)

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        timeout = self.endpoint.timeout
        if self._tls is not None:
            return http.client.HTTPSConnection(
                self.endpoint.host, timeout=timeout, context=self._tls, blocksize=BLOCK
            ), False
        return http.client.HTTPConnection(
            self.endpoint.host, timeout=timeout, blocksize=BLOCK
        ), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < max(4, os.cpu_count() or 4):
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
