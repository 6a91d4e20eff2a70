"""Real processes for end-to-end tests: a controller over HTTPS on a socket the test
bound first (handed over as a file descriptor, so nothing races for the port), and
agents started exactly as a device starts them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class ControllerProcess:
    """``edgefleet controller serve`` on a socket bound by the test."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        workers: int = 2,
        **settings: Any,
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.workers = workers
        self.settings = settings
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"controller-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_token = ""
        self.admin_password = ""

    @property
    def ca(self) -> str:
        return str(self.data_dir / "pki" / "root.pem")

    def replica(self, data_dir: Path, **settings: Any) -> ControllerProcess:
        """Another replica of this controller, as if on another host: a data directory of
        its own holding a copy of this one's identity (PKI, access-token key, controller
        id), the same database, its own socket. Call once this one has started."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copytree(self.data_dir / "pki", data_dir / "pki")
        for name in ("access-token.key", "controller-id"):
            shutil.copy2(self.data_dir / name, data_dir / name)
        other = ControllerProcess(
            data_dir, self.database_url, self.workers, **{**self.settings, **settings}
        )
        other.admin_token = self.admin_token  # the first admin is in the shared database
        other.admin_password = self.admin_password
        return other

    def start(self) -> ControllerProcess:
        env = _clean_env()
        env.update(
            EDGEFLEET_DATA_DIR=str(self.data_dir),
            EDGEFLEET_PORT=str(self.port),
            EDGEFLEET_LISTEN_FD=str(self.sock.fileno()),
            EDGEFLEET_WORKERS=str(self.workers),
            EDGEFLEET_LOG_LEVEL="warning",
        )
        if self.database_url:
            env["EDGEFLEET_DATABASE_URL"] = self.database_url
        for key, value in self.settings.items():
            env[f"EDGEFLEET_{key.upper()}"] = str(value)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*EDGEFLEET, "controller", "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=[self.sock.fileno()],
                start_new_session=True,
            )
        if not self.admin_token:
            found = wait_for(
                lambda: re.search(r"(efo\.\S+)", self.log.read_text(errors="replace")),
                60,
                f"the first admin token in {self.log}",
            )
            self.admin_token = found.group(1)
            password = re.search(
                r"console login \(shown once\): admin / (\S+)", self.log.read_text()
            )
            self.admin_password = password.group(1) if password else ""
        wait_for(self._ready, 60, "the controller to answer /readyz")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited:\n{self.log.read_text()[-3000:]}")
        try:
            return (
                httpx.get(
                    self.url + "/readyz",
                    verify=ssl.create_default_context(cafile=self.ca),
                    timeout=2,
                ).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL the whole process group: supervisor and every worker, no clean-up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def close(self) -> None:
        self.stop()
        self.sock.close()

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            verify=ssl.create_default_context(cafile=self.ca),
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The operator CLI as a user runs it, against this controller."""
        env = _clean_env()
        env.update(
            EDGEFLEET_URL=self.url, EDGEFLEET_TOKEN=self.admin_token, EDGEFLEET_CA_FILE=self.ca
        )
        return subprocess.run(
            [*EDGEFLEET, *args], env=env, capture_output=True, text=True, timeout=60
        )

    def registration(self, path: Path, **token: Any) -> Path:
        """Create site (once) and token; write the registration file a device is flashed with."""
        with self.client() as c:
            site = token.setdefault("site", "shop-1")
            if not any(s["name"] == site for s in c.get("/sites").json()):
                c.post("/sites", json={"name": site}).raise_for_status()
            r = c.post("/tokens", json=token)
            r.raise_for_status()
        path.write_text(yaml.safe_dump(r.json()["registration"]))
        return path


class AgentProcess:
    """``edgefleet agent run`` with its own state directory."""

    def __init__(
        self,
        registration: Path | None,
        state_dir: Path,
        serial: str,
        qr_payload: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        """Enrols with the registration file, or (``registration=None``) a QR payload;
        ``extra`` are more flags of ``edgefleet agent run``."""
        self.state_dir = state_dir
        self.log = state_dir.parent / f"{state_dir.name}.log"
        env = _clean_env()
        source = (
            ["--registration", str(registration)]
            if registration is not None
            else ["--qr-payload", str(qr_payload)]
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *EDGEFLEET,
                    "agent",
                    "run",
                    *source,
                    "--state-dir",
                    str(state_dir),
                    "--serial",
                    serial,
                    "--hardware-id",
                    serial,
                    *(extra or []),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def state(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
