"""Which devices go in which wave: pure functions, so a dry run over the live fleet and
the engine make the same waves.

A wave plan is a list of steps, each cumulative: ``1`` (the first device: a canary),
``5%`` (up to 5% of the devices), ``100%``; or an explicit group ``key=value`` (the
devices with that label, whatever their rank). Membership is stable: devices are ranked
by a hash of the rollout's id and their own, so a device keeps its wave however many
others join or leave the fleet, and two rollouts do not pick the same canaries.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edgefleet.errors import BadRequest

MAX_STEPS = 32
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


@dataclass(frozen=True)
class Step:
    """One wave's cumulative size (``count`` devices, or ``percent`` of them), or an
    explicit group of devices labelled ``label``."""

    count: int | None = None
    percent: float | None = None
    label: tuple[str, str] | None = None

    def __str__(self) -> str:
        if self.label is not None:
            return f"{self.label[0]}={self.label[1]}"
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True)
class Member:
    """A device as planning sees it."""

    device_id: str
    site: str
    labels: dict[str, str] = field(default_factory=dict)
    online: bool = True


@dataclass
class Wave:
    step: Step
    members: list[Member] = field(default_factory=list)

    @property
    def offline(self) -> int:
        return sum(not m.online for m in self.members)

    @property
    def sites(self) -> set[str]:
        return {m.site for m in self.members}


def parse_steps(text: str) -> list[Step]:
    """``1,5%,25%,100%`` or ``ring=canary,10%,100%``; sizes must grow, and the plan must
    end at 100% so that every selected device is in a wave."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise BadRequest("a wave plan needs at least one step, e.g. 1,5%,25%,100%", code="bad_plan")
    if len(items) > MAX_STEPS:
        raise BadRequest(f"a wave plan has at most {MAX_STEPS} steps", code="bad_plan")
    steps = [_step(item) for item in items]
    last_percent = 0.0
    last_count = 0
    for step in steps:
        if step.percent is not None:
            if step.percent <= last_percent:
                raise BadRequest(
                    f"wave {step} does not grow after {last_percent:g}%: each step is the "
                    "cumulative share of the devices",
                    code="bad_plan",
                )
            last_percent = step.percent
        elif step.count is not None:
            if step.count <= last_count or last_percent:
                raise BadRequest(
                    f"wave {step}: device counts come first and grow (e.g. 1,5,10%,100%)",
                    code="bad_plan",
                )
            last_count = step.count
    if steps[-1].percent != 100:
        raise BadRequest(
            "the last wave must be 100% so that every selected device is in a wave",
            code="bad_plan",
        )
    return steps


def _step(item: str) -> Step:
    if "=" in item:
        key, _, value = item.partition("=")
        if not key or not value:
            raise BadRequest(f"wave group {item!r} must read key=value", code="bad_plan")
        return Step(label=(key, value))
    found = _PERCENT.match(item)
    if found:
        percent = float(found.group(1))
        if not 0 < percent <= 100:
            raise BadRequest(
                f"wave {item}: a share is more than 0% and at most 100%", code="bad_plan"
            )
        return Step(percent=percent)
    if item.isdigit() and int(item) > 0:
        return Step(count=int(item))
    raise BadRequest(
        f"wave {item!r} is not a count (1), a share (5%) or a group (ring=canary)",
        code="bad_plan",
    )


def rank_key(rollout_key: str, device_id: str) -> bytes:
    """A device's place in a rollout's order: stable, and different per rollout."""
    return hashlib.sha256(f"{rollout_key}\0{device_id}".encode()).digest()


def assign(members: Iterable[Member], steps: Sequence[Step], rollout_key: str) -> list[Wave]:
    """The waves, in order: explicit groups take their devices first (in plan order);
    the rest fill the counted and percentage waves by rank."""
    pool = sorted(members, key=lambda m: rank_key(rollout_key, m.device_id))
    total = len(pool)
    waves = [Wave(step) for step in steps]
    placed: set[str] = set()
    for wave in waves:
        if wave.step.label is not None:
            key, value = wave.step.label
            wave.members = [m for m in pool if m.labels.get(key) == value]
            placed.update(m.device_id for m in wave.members)
    rest = [m for m in pool if m.device_id not in placed]
    taken = len(placed)
    start = 0
    for wave in waves:
        if wave.step.label is not None:
            continue
        if wave.step.count is not None:
            upto = wave.step.count
        else:
            assert wave.step.percent is not None
            upto = math.ceil(total * wave.step.percent / 100)
        end = min(max(upto - taken, start), len(rest))
        wave.members = rest[start:end]
        start = end
    return waves
