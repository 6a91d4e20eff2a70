"""Where inference results go: the agent's result store.

The runner hands every prediction to a :class:`ResultStore` before it answers
the caller. The interface is the contract; the implementation here is a stopgap
that the durable offline buffer (SQLite, local and remote acks) replaces
without changing a caller.

A record is a JSON-able dict, one per prediction::

    {"ts": 1718000000.123,                     # wall clock, seconds since the epoch
     "model": {"name": ..., "version": ..., "digest": "sha256:..."},
     "inputs_sha256": "...",                   # see edgefleet.agent.runner.inputs
     "outputs": {"y": [[...]]},
     "latency_ms": 0.05}                       # onnxruntime's own time
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Protocol

RESULTS_FILE = "results.jsonl"


class ResultStore(Protocol):
    """Takes one prediction record; raises ``OSError`` (or any exception) if it could not."""

    def append(self, record: dict[str, Any]) -> None: ...


class JsonLinesStore:
    """One JSON line per record, appended to ``folder/results.jsonl``.

    Durable against a crash of the runner (each record reaches the kernel in
    one ``write`` before ``append`` returns), not against power loss: there is
    no fsync per record, which would cost milliseconds on an SD card. The file
    is opened for each record so that a folder that went away (storage
    unmounted, removed) fails loudly instead of feeding an unlinked file.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = folder / RESULTS_FILE
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                written = os.write(fd, line)
            finally:
                os.close(fd)
        if written != len(line):
            raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
