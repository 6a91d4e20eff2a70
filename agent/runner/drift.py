"""The runner's drift monitor: its model's live traffic counted into a ``Sketch``, and
each closed window written to the device's drift store for the daemon to report.

Built only when the slot holds the model's drift reference and the profile monitors
drift. The sketch is updated after each inference, under a lock (the server answers
on several threads); a window closes on the first inference after its end or, when
traffic stops, on a timer. A reference that does not fit the model's inputs, or a
sketch that fails, turns drift monitoring off for this runner with one log line:
it never costs the caller its answer.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.drift_windows import DriftWindows
from edgefleet.agent.runner.api import ModelRef
from edgefleet.drift.reference import Reference
from edgefleet.drift.sketch import Sketch, Window
from edgefleet.errors import ConfigError

log = logging.getLogger("edgefleet.runner")

ROLL_EVERY_MAX_S = 5.0
"""The timer closing a window after traffic stops checks this often at most (a tenth of
the window when shorter), so a window reaches the store soon after its end."""


class DriftMonitor:
    def __init__(
        self,
        reference: Path,
        model: ModelRef,
        store: DriftWindows,
        *,
        window_seconds: float,
        sample_rate: float,
        artifact: str = "",
        input_names: list[str] | None = None,
    ) -> None:
        """Raises ConfigError when the reference cannot be read or does not fit the
        model's inputs (``input_names``)."""
        try:
            parsed = Reference.from_bytes(reference.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read the drift reference {reference}: {exc}") from exc
        missing = sorted({i.name for i in parsed.inputs} - set(input_names or []))
        if input_names is not None and missing:
            raise ConfigError(
                f"the drift reference {reference} names inputs the model lacks: {missing}; "
                "push the model again with a reference computed on it"
            )
        self.sketch = Sketch(parsed, window_seconds=window_seconds, sample_rate=sample_rate)
        self.model = model
        self.artifact = artifact
        self.store = store
        self.failed: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._roll_on_time, daemon=True)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()

    def update(self, inputs: dict[str, np.ndarray], outputs: dict[str, Any]) -> None:
        """Count one inference; store the window it closed, if any."""
        if self.failed is not None:
            return
        try:
            with self._lock:
                closed = self.sketch.update(inputs, outputs)
            if closed is not None:
                self._keep(closed)
        except Exception as exc:  # a sketch bug or a full disk: the caller still gets its answer
            self._fail(exc)

    def _roll_on_time(self) -> None:
        every = min(ROLL_EVERY_MAX_S, self.sketch.window_seconds / 10)
        while not self._stop.wait(every):
            if self.failed is not None:
                return
            try:
                with self._lock:
                    closed = self.sketch.roll()
                if closed is not None:
                    self._keep(closed)
            except Exception as exc:
                self._fail(exc)

    def _keep(self, window: Window) -> None:
        with self._lock:
            doc = self.sketch.to_wire(window)
        self.store.put(
            {"model": self.model["name"], "digest": self.model["digest"], "artifact": self.artifact}
            | doc
        )

    def _fail(self, exc: Exception) -> None:
        self.failed = f"{type(exc).__name__}: {exc}"
        log.error("drift monitoring of %s stopped: %s", self.model["name"], self.failed)
