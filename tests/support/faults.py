"""Servers and machines the fault tests break on purpose, each the test's own: a private
PostgreSQL on a loopback port (``initdb``/``pg_ctl`` as the postgres user, which refuse
root), a small tmpfs to fill, an agent whose clock is off (Debian's ``faketime``), and
an operator polling the API who records every answer and how long it took."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


def postgres_binary(name: str) -> str | None:
    """On PATH, or where Debian's postgresql package puts it (newest version first)."""
    found = shutil.which(name)
    if found is None:
        versions = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        found = str(versions[-1]) if versions else None
    return found


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackPostgres:
    """A PostgreSQL server of the test's own on 127.0.0.1 (TCP, as a controller reaches
    a real one), which the test may restart and crash; never the shared one on 5432."""

    def __init__(self) -> None:
        initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip(
                "initdb/pg_ctl not found: install Debian's postgresql package "
                "(apt-get install postgresql) to run this test on a private server"
            )
        self.pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="efpg-", dir="/tmp"))
        self.data = self.root / "data"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("no postgres user: PostgreSQL refuses to run as root")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        # pg_ctl binds the port itself; one taken between our probe and its start fails
        # start() loudly, never silently reaches another server.
        self.port = _free_loopback_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self._as_postgres, *cmd], capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd[0]} failed:\n{done.stdout}\n{done.stderr}"

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=60"
        )

    def start(self) -> None:
        log = str(self.root / "log")
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", log, "-w", "-o", self._options(), "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are told and closed; ``immediate``: as a crash (recovery on
        the next start)."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        subprocess.run(
            [*self._as_postgres, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def loopback_postgres() -> Iterator[LoopbackPostgres]:
    pg = LoopbackPostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


@contextmanager
def small_tmpfs(mountpoint: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mountpoint``, unmounted afterwards; skips where this
    machine cannot mount one (it needs root, or CAP_SYS_ADMIN in a container)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(folder: Path, chunk: int = 64 * 1024) -> Path:
    """Write ``folder/ballast`` until the file system refuses another byte; returns it
    (delete it to free the space)."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"\0" * chunk
        while chunk:
            try:
                os.write(fd, block[:chunk])
            except OSError:
                chunk //= 2  # the last few kilobytes, down to the last byte
    finally:
        os.close(fd)
    return ballast


FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def faketime_env(offset: str) -> dict[str, str]:
    """Environment that starts a process with its wall clock ``offset`` off (``+1h``,
    ``-1h``) through Debian's libfaketime; monotonic clocks stay true, as on a device
    whose RTC is wrong. Skips when the library is missing."""
    lib = next(
        (str(p) for p in Path("/usr/lib").glob("*/faketime/libfaketime.so.1")),
        FAKETIME_LIB if Path(FAKETIME_LIB).exists() else None,
    )
    if lib is None:
        pytest.skip("libfaketime not found: apt-get install faketime (deps/apt-test.txt)")
    return {
        "LD_PRELOAD": lib,
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


@dataclass
class Answer:
    at: float
    """time.monotonic() when the request went out."""
    took: float
    status: int | None
    """None: no answer (connection refused, timeout)."""
    body: str
    retry_after: str | None


class Poller:
    """An operator listing something in a loop (its own thread), keeping every answer:
    what a person at the console or the CLI sees through an outage."""

    def __init__(
        self,
        url: str,
        cafile: str,
        token: str,
        path: str,
        every: float = 0.2,
        timeout: float = 15.0,
    ) -> None:
        self.answers: list[Answer] = []
        self._client = httpx.Client(
            base_url=url,
            verify=ssl.create_default_context(cafile=cafile),
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self._path = path
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = self._client.get(self._path)
                answer = Answer(
                    t0, time.monotonic() - t0, r.status_code, r.text, r.headers.get("retry-after")
                )
            except httpx.HTTPError as exc:
                answer = Answer(t0, time.monotonic() - t0, None, repr(exc), None)
            self.answers.append(answer)
            self._stop.wait(self._every)

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at >= t]


@contextmanager
def skewed_clock(offset: str) -> Iterator[None]:
    """Processes started inside run with their wall clock ``offset`` off (libfaketime):
    the environment is changed only while they start (a child copies it at spawn)."""
    skew = faketime_env(offset)
    saved = {k: os.environ.get(k) for k in skew}
    os.environ.update(skew)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
