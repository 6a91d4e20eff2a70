"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) as a plain
process on 127.0.0.1, filesystem storage in a temporary folder.

``TokenAuth`` switches on distribution's token authentication: the registry then sends
clients to ``realm`` for a bearer token and trusts only JWTs signed by a key whose
certificate is in ``rootcertbundle``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx
import pytest
import yaml

BINARY = "docker-registry"
INSTALL_HINT = "install Debian's registry: apt-get install docker-registry (make test does it)"


def require_registry() -> str:
    """The binary's path, or skip the test with how to get it."""
    path = shutil.which(BINARY)
    if path is None:
        pytest.skip(f"{BINARY} is not installed: {INSTALL_HINT}")
    return path


@dataclass(frozen=True)
class TokenAuth:
    realm: str
    """The controller's token endpoint, e.g. ``https://127.0.0.1:8443/v2/token``."""
    service: str
    issuer: str
    rootcertbundle: Path
    """PEM certificates of the keys allowed to sign tokens."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Registry:
    """``docker-registry serve CONFIG.yml`` on a free loopback port; ``url`` is its base."""

    def __init__(self, folder: Path, auth: TokenAuth | None = None, port: int = 0) -> None:
        """``port``: one chosen beforehand (a controller's settings must name it), else
        a free one is picked at start."""
        self.folder = folder
        self.auth = auth
        self._fixed_port = port
        self.storage = folder / "storage"
        self.config = folder / "config.yml"
        self.log = folder / "registry.log"
        self.port = 0
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as it appears in an image reference."""
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "edgefleet-tests"},
        }
        if self.auth is not None:
            config["auth"] = {
                "token": {
                    "realm": self.auth.realm,
                    "service": self.auth.service,
                    "issuer": self.auth.issuer,
                    "rootcertbundle": str(self.auth.rootcertbundle),
                }
            }
        self.config.write_text(yaml.safe_dump(config))

    def start(self, timeout: float = 15.0) -> Registry:
        binary = require_registry()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another process may take the port between probe and bind
            self.port = self._fixed_port or free_port()
            self.url = f"http://{self.host}"
            self._write_config()
            with self.log.open("ab") as log:
                self._proc = subprocess.Popen(
                    [binary, "serve", str(self.config)], stdout=log, stderr=log
                )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start; see {self.log}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                response = httpx.get(f"{self.url}/v2/", timeout=1.0)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            return response.status_code in (200, 401)
        return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
