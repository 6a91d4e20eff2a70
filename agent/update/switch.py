"""Which runners serve: the active set on the main sockets, a candidate beside it.

The main socket of a model is ``<socket dir>/<name>.sock``, the one applications
call. A candidate set is served on ``<name>.next.sock`` by new runners while the
main ones keep serving, so the health checks never take the device's model away; a
commit restarts the main runners on the new slot's files, a rollback only stops the
candidates.

A shadow plan (``set_shadow``) gives a main runner a candidate to compare with on its
live inputs: a new runner with it (or without it, once the plan drops it) takes the
socket over from the old one, which is stopped after; runners whose candidate did not
change keep running. The health checks' candidate
runners never run a shadow.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
from edgefleet.agent.update.modelset import load_set
from edgefleet.errors import ConfigError

log = logging.getLogger("edgefleet.agent")

MAX_SOCKET_PATH = 107
"""Linux's limit on a Unix socket's path (``sun_path`` less its terminator)."""
CANDIDATE_SUFFIX = ".next.sock"


@dataclass(frozen=True)
class ShadowSpec:
    """A pulled candidate to run in shadow beside the active model of its name."""

    key: str
    model: Path
    digest: str
    """The file's ``sha256:<hex>``."""
    reference: str
    """Pinned by its manifest digest."""
    sample_rate: float = 1.0
    window_seconds: float = 300.0


class ModelServing:
    def __init__(
        self,
        socket_dir: Path,
        results: Path,
        candidate_results: Path,
        threads: int = 1,
        start_timeout: float = 30.0,
    ) -> None:
        """``candidate_results`` keeps the health checks' predictions out of the
        device's own results."""
        self.socket_dir = socket_dir
        self.results = results
        self.candidate_results = candidate_results
        self.threads = threads
        self.start_timeout = start_timeout
        self.main: dict[str, Runner] = {}
        self.candidates: dict[str, Runner] = {}
        self.shadow: dict[str, ShadowSpec] = {}
        """By active model name."""
        self._serving: tuple[Path | None, str | None] = (None, None)

    def serve(self, folder: Path | None, slot: str | None = None, take_over: bool = False) -> float:
        """Make the main sockets serve the set in ``folder`` (None: serve nothing), slot
        ``slot``'s: results name the slot and revision they came from.

        Runners already serving the same file are kept; a changed model's old runner is
        stopped, then the new one started on the same socket, or with ``take_over`` the
        new one is started first, takes the socket over, and the old one is stopped
        after (callers then see no time without a listener; one that fails to start
        leaves the old one serving). Returns the longest gap a caller of a main socket
        saw, in seconds: the time between stopping the old runner and the new one
        answering, 0 for a takeover. Raises RunnerStartError."""
        wanted = (
            self._configs(folder, ".sock", self.results, slot, self.shadow)
            if folder is not None
            else {}
        )
        self._serving = (folder, slot)
        for name in sorted(set(self.main) - set(wanted)):
            log.info("model %s is not in the active set; stopping its runner", name)
            self.main.pop(name).stop()
        gap = 0.0
        for name, config in sorted(wanted.items()):
            running = self.main.get(name)
            if running is not None and running.config == config:
                continue
            runner = Runner(config)
            if running is not None and take_over:
                runner.start(take_over=True)
                self.main[name] = runner
                running.stop()
                continue
            started = time.monotonic()
            if running is not None:
                running.stop()
                del self.main[name]
            runner.start()
            self.main[name] = runner
            gap = max(gap, time.monotonic() - started)
        return gap

    def set_shadow(self, specs: dict[str, ShadowSpec]) -> float:
        """Run these candidates in shadow (by active model name; empty: none) from now
        on: the main runners whose candidate changed are replaced by a takeover, so
        callers keep a listener throughout. Returns the seconds the switch took."""
        self.shadow = dict(specs)
        folder, slot = self._serving
        if folder is None:
            return 0.0
        started = time.monotonic()
        self.serve(folder, slot, take_over=True)
        return time.monotonic() - started

    def start_candidates(self, folder: Path, slot: str | None = None) -> dict[str, Runner]:
        """Runners for the set in ``folder`` on the candidate sockets; RunnerStartError
        (with the child's last words) if one does not come up."""
        self.stop_candidates()
        for name, config in sorted(
            self._configs(folder, CANDIDATE_SUFFIX, self.candidate_results, slot, {}).items()
        ):
            runner = Runner(config)
            self.candidates[name] = runner
            runner.start()
        return dict(self.candidates)

    def stop_candidates(self) -> None:
        for runner in self.candidates.values():
            runner.stop()
        self.candidates.clear()
        shutil.rmtree(self.candidate_results, ignore_errors=True)

    def close(self) -> None:
        self.stop_candidates()
        for runner in self.main.values():
            runner.stop()
        self.main.clear()

    def _configs(
        self,
        folder: Path,
        suffix: str,
        results: Path,
        slot: str | None,
        shadow: dict[str, ShadowSpec],
    ) -> dict[str, RunnerConfig]:
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        configs = {}
        modelset = load_set(folder)
        for model in modelset.models:
            socket = self.socket_dir / f"{model.name}{suffix}"
            if len(str(socket)) > MAX_SOCKET_PATH:
                raise ConfigError(
                    f"socket path {socket} is longer than {MAX_SOCKET_PATH} bytes; set a "
                    "shorter --socket-dir (EDGEFLEET_AGENT_SOCKET_DIR)"
                )
            configs[model.name] = RunnerConfig(
                model=folder / model.file,
                socket=socket,
                results=results,
                name=model.name,
                version=model.version,
                digest=model.digest,
                threads=self.threads,
                start_timeout=self.start_timeout,
                slot=slot,
                revision=modelset.revision,
                drift_reference=folder / model.reference_file if model.reference_file else None,
                drift_window=(model.drift or {}).get("window_seconds", 3600),
                drift_sample_rate=(model.drift or {}).get("sample_rate", 1.0),
                artifact=model.reference,
                **_shadow_fields(shadow.get(model.name)),
            )
        return configs


def _shadow_fields(spec: ShadowSpec | None) -> dict[str, object]:
    if spec is None:
        return {}
    return {
        "shadow_model": spec.model,
        "shadow_digest": spec.digest,
        "shadow_key": spec.key,
        "shadow_reference": spec.reference,
        "shadow_sample_rate": spec.sample_rate,
        "shadow_window": spec.window_seconds,
    }
