"""Git over smart HTTP for the k3d suite: ``git http-backend`` behind the standard
library's HTTP server, serving the bare repositories under one folder.

The controller pushes each site's repository here (``gitops.remote``) and every site's
Flux or Argo CD pulls its own from it, as they would from any Git host; both reach it at
``host.k3d.internal``. Anonymous and read-write: a test fixture, never a server to keep.
"""

from __future__ import annotations

import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    root: Path

    def _backend(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "edgefleet",  # lets the controller push (receive-pack)
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(length),
        }
        if self.headers.get("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["content-encoding"]
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _backend
    do_POST = _backend

    def log_message(self, *args: object) -> None:
        pass


class GitServer:
    """``http://<address>:<port>/<name>.git`` for every bare repository in ``root``;
    ``create(name)`` makes an empty one the controller can push to."""

    def __init__(self, root: Path, address: str = "0.0.0.0") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        handler = type("Handler", (_Handler,), {"root": root})
        self.server = ThreadingHTTPServer((address, 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def create(self, name: str) -> None:
        repo = self.root / f"{name}.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
        subprocess.run(["git", "-C", str(repo), "config", "http.receivepack", "true"], check=True)

    def __enter__(self) -> GitServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
