"""Status history for the console's charts: one sample per device and sample period
(``status_sample_seconds``), written behind in batches like last seen.

``device_status.store`` hands over the chart values of every report it stores; a
heartbeat (a report equal to the last one) only names the device, and its sample repeats
those values, so a heartbeat still costs no database write on the request path. The
first report of a period makes the period's sample; the rest of the period adds nothing.
The flush writes every pending sample in one statement; ``(device, period)`` is the
key, so a device heard by two workers or replicas in one period is stored once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from edgefleet.controller.db import write_behind
from edgefleet.controller.models import DeviceSample
from edgefleet.wire import DeviceState, StatusReport


@dataclass(frozen=True, slots=True)
class ChartValues:
    """What the charts keep of a status report."""

    site_id: int
    state: str
    healthy: bool
    applied_revision: int | None
    p95_ms: float | None
    error_rate: float | None
    buffer_depth: int
    buffer_drops: int


def values_of(report: StatusReport, state: DeviceState, site_id: int) -> ChartValues:
    return ChartValues(
        site_id=site_id,
        state=state.value,
        healthy=report.health.ok,
        applied_revision=report.applied_revision,
        p95_ms=report.inference.p95_ms,
        error_rate=report.inference.error_rate,
        buffer_depth=report.buffer.depth,
        buffer_drops=sum(report.buffer.drops.values()),
    )


class StatusSampler:
    def __init__(self, engine: Engine, period_seconds: int) -> None:
        self._engine = engine
        self.period_seconds = period_seconds
        self._values: dict[str, ChartValues] = {}
        """Each device's last stored report, as charts need it: what a heartbeat repeats."""
        self._sampled: dict[str, int] = {}
        """Each device's last sampled period (Unix time // period)."""
        self._pending: dict[tuple[str, int], ChartValues] = {}
        self._lock = threading.Lock()

    def record(self, device_id: str, values: ChartValues, now: float | None = None) -> None:
        """A stored report: remember its values, and sample them if the period has none."""
        self._values[device_id] = values
        self._sample(device_id, values, now)

    def seen(self, device_id: str, now: float | None = None) -> None:
        """A heartbeat: sample the last report's values if the period has none yet."""
        values = self._values.get(device_id)
        if values is not None:
            self._sample(device_id, values, now)

    def _sample(self, device_id: str, values: ChartValues, now: float | None) -> None:
        period = int((time.time() if now is None else now) // self.period_seconds)
        if self._sampled.get(device_id) == period:
            return
        with self._lock:
            self._sampled[device_id] = period
            self._pending[device_id, period] = values

    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write every pending sample; returns how many. On failure they stay pending
        and the error is raised."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        step = self.period_seconds
        rows = [
            {"device_id": d, "at": datetime.fromtimestamp(p * step, UTC), **asdict(v)}
            for (d, p), v in pending.items()
        ]
        try:
            write_behind(self._engine, _insert, rows)
        except BaseException:
            with self._lock:
                self._pending = {**pending, **self._pending}
            raise
        return len(rows)


def _insert(conn: Connection, rows: list[dict[str, object]]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(DeviceSample.__table__).on_conflict_do_nothing(), rows)  # type: ignore[attr-defined]
