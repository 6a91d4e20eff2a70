"""Where inference results go: the agent's result store.

The runner hands every prediction to a :class:`ResultStore` before it answers
the caller. The interface is the contract; :class:`BufferStore` keeps each record
in the durable offline buffer (:mod:`edgefleet.agent.buffer`) until the
controller has it.

A record is a JSON-able dict, one per prediction::

    {"ts": 1718000000.123,                     # wall clock, seconds since the epoch
     "model": {"name": ..., "version": ..., "digest": "sha256:..."},
     "inputs_sha256": "...",                   # see edgefleet.agent.runner.inputs
     "outputs": {"y": [[...]]},
     "latency_ms": 0.05}                       # onnxruntime's own time
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgefleet.agent.buffer import Buffer

RESULTS_FOLDER = "results"
"""Under the agent's state directory; the runners write, the uploader drains."""
RESULTS_DB = "results.db"


class ResultStore(Protocol):
    """Takes one prediction record; raises ``OSError`` (or any exception) if it could not."""

    def append(self, record: dict[str, Any]) -> None: ...


class BufferStore:
    """Each record in ``folder/results.db``, on disk (fsynced) before ``append`` returns.

    The file is checked on every record so that a folder that went away (storage
    unmounted, removed) fails loudly instead of feeding an unlinked database; a
    folder that came back gets a new database, with a new buffer epoch.
    """

    def __init__(self, folder: Path, slot: str | None = None, revision: int | None = None) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.slot = slot
        self.revision = revision
        self.buffer = self._open()

    def append(self, record: dict[str, Any]) -> None:
        if not self.buffer.path.exists():
            if not self.folder.is_dir():
                raise FileNotFoundError(f"the results folder {self.folder} is gone")
            self.buffer.close()
            self.buffer = self._open()
        digest = record.get("model", {}).get("digest") or ""
        self.buffer.append(
            {"payload": record, "digest": digest, "slot": self.slot, "revision": self.revision}
        )

    def _open(self) -> Buffer:
        from edgefleet.agent.buffer import Buffer  # SQLite only where results are kept

        return Buffer(self.folder / RESULTS_DB)
