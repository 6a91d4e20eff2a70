"""What devices' result buffers hold, as their status reports say: depth, drops by
reason, and the lag (age of the oldest result the controller does not have yet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from edgefleet.controller.db import reading
from edgefleet.controller.models import Device, aware
from edgefleet.wire import DeviceState


@dataclass(frozen=True)
class DeviceBuffer:
    device_id: str
    depth: int
    lag_seconds: float
    drops: dict[str, int] = field(default_factory=dict)


def lag_of(status: dict[str, Any] | None, seen: datetime | None, now: datetime) -> float:
    """The oldest unsent result's age at the last status, plus the time since: an
    offline device's backlog keeps ageing. 0 when its buffer was empty."""
    buffer = (status or {}).get("buffer") or {}
    age = buffer.get("oldest_age_seconds")
    if not buffer.get("depth") or age is None or seen is None:
        return 0.0
    return float(age) + max((now - seen).total_seconds(), 0.0)


def device_buffers(engine: Engine) -> list[DeviceBuffer]:
    """Every device not decommissioned, as of now."""
    now = datetime.now(UTC)
    with reading(engine) as conn:
        rows = conn.execute(
            select(Device.id, Device.status, Device.last_seen_at)
            .where(Device.state != DeviceState.decommissioned.value)
            .order_by(Device.id)
        ).all()
    out = []
    for device_id, status, seen in rows:
        buffer = (status or {}).get("buffer") or {}
        out.append(
            DeviceBuffer(
                device_id=device_id,
                depth=int(buffer.get("depth") or 0),
                lag_seconds=lag_of(status, aware(seen), now),
                drops={str(k): int(v) for k, v in (buffer.get("drops") or {}).items()},
            )
        )
    return out
