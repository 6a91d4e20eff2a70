"""Direct mode: a desired revision's models, pulled by digest and served by runners.

Each model of the desired state gets one inference runner (a child process, see
``runner/``) on ``<socket_dir>/<model name>.sock``. Applying a revision pulls every
model first (resumable, verified); only when all are in the store are runners started
or replaced, so a failed pull leaves the running revision serving. The runner checks
the file's digest before it loads it. A/B slots with health-check rollback replace the
plain replacement here in a later step; the daemon sees only the ``Applier`` protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.errors import ConfigError
from edgefleet.wire import DesiredState

if TYPE_CHECKING:  # loaded on the first model: an agent with none carries no OCI client
    from edgefleet.agent.oci.pull import PulledModel, Puller
    from edgefleet.agent.runner.supervisor import Runner, RunnerConfig

log = logging.getLogger("edgefleet.agent")

MAX_SOCKET_PATH = 107
"""Linux's limit on a Unix socket's path (``sun_path`` less its terminator)."""


class DirectApplier:
    """Serves the desired models; ``apply`` returns once they answer on their sockets."""

    def __init__(
        self,
        state_dir: Path,
        socket_dir: Path,
        token: Callable[[str], str],
        mirrors: list[str] | None = None,
        threads: int = 1,
    ) -> None:
        """``token(scope)`` gets a registry pull token (from the controller)."""
        self._models = state_dir / "models"
        self._token = token
        self._mirrors = mirrors or []
        self._puller: Puller | None = None
        self._sockets = socket_dir
        self._results = state_dir / "results"
        self._threads = threads
        self._runners: dict[str, Runner] = {}

    @property
    def runners(self) -> dict[str, Runner]:
        """Model name -> its runner, for the ones serving now."""
        return dict(self._runners)

    def apply(self, desired: DesiredState) -> int:
        if not desired.models and not self._runners:
            return desired.revision
        from edgefleet.agent.runner.supervisor import Runner

        puller = self._puller_once()
        pulled = {m.name: puller.pull(m.reference, m.origin or None) for m in desired.models}
        for name in sorted(set(self._runners) - set(pulled)):
            log.info("model %s is no longer desired; stopping its runner", name)
            self._runners.pop(name).stop()
        for name, model in sorted(pulled.items()):
            config = self._config(name, model)
            running = self._runners.get(name)
            if running is not None and running.config == config:
                continue
            if running is not None:
                running.stop()
                del self._runners[name]
            runner = Runner(config)
            runner.start()
            self._runners[name] = runner
            log.info("serving model %s (%s) on %s", name, model.digest, config.socket)
        return desired.revision

    def close(self) -> None:
        for runner in self._runners.values():
            runner.stop()
        self._runners.clear()
        if self._puller is not None:
            self._puller.close()

    def _puller_once(self) -> Puller:
        if self._puller is None:
            from edgefleet.agent.oci.pull import Puller
            from edgefleet.agent.oci.store import BlobStore

            self._puller = Puller(BlobStore(self._models), mirrors=self._mirrors, token=self._token)
        return self._puller

    def _config(self, name: str, model: PulledModel) -> RunnerConfig:
        from edgefleet.agent.runner.supervisor import RunnerConfig

        socket = self._sockets / f"{name}.sock"
        if len(str(socket)) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"socket path {socket} is longer than {MAX_SOCKET_PATH} bytes; set a shorter "
                "--socket-dir (EDGEFLEET_AGENT_SOCKET_DIR)"
            )
        self._sockets.mkdir(parents=True, exist_ok=True, mode=0o755)
        return RunnerConfig(
            model=model.path,
            socket=socket,
            results=self._results,
            name=name,
            version=model.version or "",
            digest=model.model_digest,
            threads=self._threads,
        )
