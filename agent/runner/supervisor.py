"""The agent's side of the inference runner: start it, call it, restart it, stop it.

Standard library only (the import-closure test holds it to that): onnxruntime
and NumPy live in the child, so the daemon stays small and a crash of the
runtime costs one model a restart, not the agent its life.

The child is watched by a thread that waits on it; when it dies it is started
again on the same socket, within half a second if it had been serving for a
while and after a growing delay if it keeps dying, so applications calling the
socket see a short gap, not an outage.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.runner import api
from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.runner.errors import RunnerStartError, RunnerUnavailable

log = logging.getLogger("edgefleet.agent")
T = TypeVar("T")

STABLE_AFTER_S = 30.0
"""A child that served this long before dying is restarted at once; one that dies
sooner is restarted after a growing delay, so a model that always crashes does not
spin a core."""

_POLL_S = 0.02
_TAIL_BYTES = 4096


@dataclass(frozen=True)
class RunnerConfig:
    """What one runner serves and how; equal configs mean the same child."""

    model: Path
    socket: Path
    """Unix socket of the local API; at most 107 bytes long (a Linux limit)."""
    results: Path
    """Result store folder (see :mod:`edgefleet.agent.results`)."""
    name: str = ""
    """Reported with every answer; the file's stem if empty."""
    version: str = ""
    digest: str | None = None
    """``sha256:<hex>``: the child refuses a file with any other content."""
    port: int | None = None
    """Also serve the API on this 127.0.0.1 port."""
    slot: str | None = None
    revision: int | None = None
    """The A/B slot and profile revision the model came from, kept with each result."""
    threads: int = 1
    drift_reference: Path | None = None
    """The model's drift reference: the runner sketches live traffic against it, and
    writes each closed window to ``results`` (:mod:`edgefleet.agent.drift_windows`)."""
    drift_window: float = 3600.0
    drift_sample_rate: float = 1.0
    artifact: str = ""
    """The model's pinned OCI reference, reported with its drift and shadow windows."""
    shadow_model: Path | None = None
    """A candidate run in shadow on a sample of the live inputs, compared with this
    model (:mod:`edgefleet.agent.runner.shadow`); its windows go to ``results``."""
    shadow_digest: str | None = None
    """The candidate file's ``sha256:<hex>``: any other content is refused."""
    shadow_key: str = ""
    shadow_reference: str = ""
    """The candidate's pinned OCI reference: its digest names it in the windows."""
    shadow_sample_rate: float = 1.0
    shadow_window: float = 300.0
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    call_timeout: float = 30.0

    @property
    def log_file(self) -> Path:
        """The child's standard error (its log), next to its socket."""
        return self.socket.with_name(self.socket.name + ".log")

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "edgefleet.agent.runner",
            "--model",
            str(self.model),
            "--socket",
            str(self.socket),
            "--results",
            str(self.results),
            "--version",
            self.version,
            "--threads",
            str(self.threads),
            "--watch-stdin",
        ]
        if self.name:
            cmd += ["--name", self.name]
        if self.digest:
            cmd += ["--digest", self.digest]
        if self.port is not None:
            cmd += ["--port", str(self.port)]
        if self.slot is not None:
            cmd += ["--slot", self.slot]
        if self.revision is not None:
            cmd += ["--revision", str(self.revision)]
        if self.drift_reference is not None:
            cmd += [
                "--drift-reference",
                str(self.drift_reference),
                "--drift-window",
                f"{self.drift_window:g}",
                "--drift-sample-rate",
                f"{self.drift_sample_rate:g}",
            ]
        if self.artifact:
            cmd += ["--artifact", self.artifact]
        if self.shadow_model is not None:
            cmd += [
                "--shadow-model",
                str(self.shadow_model),
                "--shadow-key",
                self.shadow_key,
                "--shadow-reference",
                self.shadow_reference,
                "--shadow-sample-rate",
                f"{self.shadow_sample_rate:g}",
                "--shadow-window",
                f"{self.shadow_window:g}",
            ]
            if self.shadow_digest:
                cmd += ["--shadow-digest", self.shadow_digest]
        return cmd


class Runner:
    """One model served by a child process, restarted whenever it dies until :meth:`stop`."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.restarts = 0
        """Children started again after one died."""
        self._client = RunnerClient(config.socket, config.call_timeout)
        self._proc: subprocess.Popen[bytes] | None = None
        self._serving: subprocess.Popen[bytes] | None = None
        """The child that answered /health once started; None while starting again."""
        self._started_at = 0.0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        """Set while not started: no child is (re)started, the watcher stands down."""
        self._stopping.set()
        self._backoff = Backoff(base=0.5, cap=30.0)

    @property
    def pid(self) -> int | None:
        """The serving child's process id; None while none serves (stopped, restarting)."""
        proc = self._serving
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self, take_over: bool = False) -> None:
        """Start the child and return once it answers ``/health``; a no-op if started.

        With ``take_over`` the child replaces a runner that serves the socket (it moves
        its own socket over the path): stop that one after this returns. Raises
        RunnerStartError, with the child's last words, if it exits first (model
        missing, not ONNX, wrong digest, socket in use) or does not answer within
        ``start_timeout``. Call ``start`` and ``stop`` from one thread.
        """
        if not self._stopping.is_set():
            return  # started: the watcher keeps a child serving
        self._stopping.clear()
        self._backoff.reset()
        try:
            self._launch(take_over)
        except BaseException:
            self._stopping.set()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; no restart afterwards."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _terminate(proc, self.config.stop_timeout)
        self._client.close()

    def predict(self, inputs: Mapping[str, Any]) -> api.Prediction:
        """Outputs for ``inputs`` (input name to nested lists).

        Raises BadRequest with the runner's reason when the inputs do not fit the
        model, RunnerUnavailable when no child answers (it may be restarting).
        """
        return self._call(lambda: self._client.predict(inputs))

    def health(self) -> api.Health:
        return self._call(self._client.health)

    def model_info(self) -> api.ModelInfo:
        """The model's reference and its input and output signature."""
        return self._call(self._client.model_info)

    def __enter__(self) -> Runner:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the child ------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RunnerUnavailable as exc:
            if self._stopping.is_set():
                raise RunnerUnavailable(f"{exc.message}; the runner is stopped") from exc
            if self.pid is None:
                raise RunnerUnavailable(f"{exc.message}; the runner is restarting") from exc
            raise

    def _launch(self, take_over: bool = False) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise RunnerStartError("the runner was stopped while starting")
            try:
                # a takeover's old runner still writes its log: append after it
                with self.config.log_file.open("ab" if take_over else "wb") as err:
                    proc = subprocess.Popen(
                        self.config.command() + (["--take-over"] if take_over else []),
                        stdin=subprocess.PIPE,
                        stdout=err,
                        stderr=err,
                        start_new_session=True,  # stopped in order by the agent, not by ^C
                    )
            except OSError as exc:
                raise RunnerStartError(
                    f"cannot start the inference runner for {self._what}: {exc}"
                ) from exc
            self._proc = proc
            self._started_at = time.monotonic()
        self._await_ready(proc)
        self._serving = proc
        threading.Thread(target=self._watch, args=(proc,), daemon=True).start()
        log.info(
            "inference runner pid=%d serves %s on %s", proc.pid, self._what, self.config.socket
        )

    @property
    def _what(self) -> str:
        return self.config.name or str(self.config.model)

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                _terminate(proc, 0)
                raise RunnerStartError(
                    f"the inference runner for {self._what} exited ({_exit(code)}) before "
                    f"serving; its log ({self.config.log_file}) ends: {self._tail()}"
                )
            try:
                if self._client.health()["pid"] == proc.pid:
                    return
                self._client.close()  # the runner it takes over: connect anew next time
            except RunnerUnavailable:
                pass  # not listening yet
            if time.monotonic() > deadline:
                _terminate(proc, self.config.stop_timeout)
                raise RunnerStartError(
                    f"the inference runner for {self._what} did not answer on "
                    f"{self.config.socket} within {self.config.start_timeout:g} s; its log "
                    f"({self.config.log_file}) ends: {self._tail()}"
                )
            time.sleep(_POLL_S)

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for the child to die; unless stopped, start another until one serves."""
        code = proc.wait()
        if self._stopping.is_set():
            return
        if time.monotonic() - self._started_at > STABLE_AFTER_S:
            self._backoff.reset()
        log.error(
            "inference runner pid=%d for %s died (%s); restarting. Its log ends: %s",
            proc.pid,
            self._what,
            _exit(code),
            self._tail(),
        )
        while not self._stopping.wait(self._backoff.next_delay()):
            try:
                self._launch()
            except RunnerStartError as exc:
                log.error("%s", exc.message)
                continue
            self.restarts += 1
            return

    def _tail(self) -> str:
        try:
            with self.config.log_file.open("rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - _TAIL_BYTES))
                text = fh.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return " | ".join(lines[-5:]) or "(empty)"


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdin is not None:
        proc.stdin.close()


def _exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
