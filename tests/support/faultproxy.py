"""FaultProxy: a loopback TCP proxy whose faults tests switch at run time.

It forwards raw bytes, so TLS still ends at the real server behind it; point a
client at ``127.0.0.1:proxy.port`` and the server's certificate must name
127.0.0.1. Modes (they apply at once, to new and open connections):

    pass            forward both ways (the default)
    refuse          accept, then reset at once (RST); open connections are reset too
    drop            accept, then close at once (FIN, or RST if the client already sent
                    bytes); open connections are closed too
    delay(ms)       wait ``ms`` before forwarding each chunk, both ways
    cut_after(n)    close a connection once ``n`` bytes came back from upstream

One selector thread accepts connections; each connection has two small pump
threads (blocking sockets with short timeouts, so close() is prompt).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time

_POLL_S = 0.05


class _Conn:
    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.from_upstream = 0
        self.closed = threading.Event()
        for s in (client, upstream):
            s.settimeout(_POLL_S)
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        while not self.closed.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if self.proxy._delay_s:
                time.sleep(self.proxy._delay_s)
            try:
                if not self._send(data, dst, downstream):
                    break
            except OSError:
                break
        self.close()

    def _send(self, data: bytes, dst: socket.socket, downstream: bool) -> bool:
        """Forward one chunk; False once the connection is to be cut here."""
        cut = self.proxy._cut_after
        if downstream and cut is not None:
            room = cut - self.from_upstream
            self.from_upstream += len(data)
            if len(data) >= room:
                dst.sendall(data[: max(room, 0)])
                return False
        dst.sendall(data)
        return True

    def close(self, reset: bool = False) -> None:
        self.closed.set()
        for s in (self.client, self.upstream):
            if reset:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.close()
        self.proxy._forget(self)


class FaultProxy:
    """Forward 127.0.0.1:``port`` to ``upstream_host:upstream_port`` with switchable faults."""

    connection: type[_Conn] = _Conn
    """A proxied connection; a subclass may give one that cuts or counts."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.accepted = 0
        self._delay_s = 0.0
        self._cut_after: int | None = None
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="faultproxy", daemon=True)
        self._thread.start()

    # -- modes ------------------------------------------------------------------

    def set_mode(self, mode: str, *, ms: float = 0, n_bytes: int | None = None) -> None:
        """Switch to ``pass``, ``refuse``, ``drop``, ``delay`` (ms) or ``cut_after`` (n_bytes)."""
        if mode not in ("pass", "refuse", "drop", "delay", "cut_after"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "cut_after" and n_bytes is None:
            raise ValueError("cut_after needs n_bytes")
        self.mode = mode
        self._delay_s = ms / 1000 if mode == "delay" else 0.0
        self._cut_after = n_bytes if mode == "cut_after" else None
        if mode in ("refuse", "drop"):
            self._close_all(reset=mode == "refuse")

    def forward(self) -> None:
        self.set_mode("pass")

    def refuse(self) -> None:
        self.set_mode("refuse")

    def drop(self) -> None:
        self.set_mode("drop")

    def delay(self, ms: float) -> None:
        self.set_mode("delay", ms=ms)

    def cut_after(self, n_bytes: int) -> None:
        self.set_mode("cut_after", n_bytes=n_bytes)

    # -- plumbing ---------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            for _key, _ in self._sel.select(timeout=_POLL_S):
                try:
                    client, _addr = self._listener.accept()
                except (BlockingIOError, OSError):
                    continue
                self.accepted += 1
                self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        client.setblocking(True)
        if self.mode in ("refuse", "drop"):
            if self.mode == "refuse":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()
            return
        with self._lock:
            self._conns.add(self.connection(self, client, upstream))

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _close_all(self, reset: bool) -> None:
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close(reset=reset)

    def close(self) -> None:
        """Stop accepting and cut every open connection."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._sel.close()
        self._listener.close()
        self._close_all(reset=False)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
