"""What an operator asks of a rollout: one document for the dry run and for
``create``, so that a plan that was shown is the rollout that runs.

``seed`` is the rollout key that ranks devices into waves (``plan.assign``). A plan
without one draws a random seed and answers with it; passing that seed back (to a
second plan or to ``create``) gives the same waves for the same selection, and a device
that joined since lands where its own hash puts it without moving the others.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgefleet.controller.rollouts.plan import Step, parse_steps
from edgefleet.wire import Strict

WEEK = 7 * 86400


class Gates(Strict):
    """Health a wave must show before the next one starts (checked by the engine)."""

    min_success_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of a wave's updated devices that must commit their update."""
    max_failures: int = Field(default=0, ge=0)
    """Failed or rolled-back updates tolerated across the whole rollout."""
    max_p95_ms: float | None = Field(default=None, gt=0)
    """Inference latency p95 the updated devices report, at most."""
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    """Share of inference calls failing on the updated devices, at most."""


class RolloutSpec(Strict):
    profile: str = Field(min_length=1, max_length=128)
    revision: int | None = Field(default=None, ge=1)
    """The revision to roll out; None: the profile's latest."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Selector: only devices with all these labels."""
    sites: list[str] = Field(default_factory=list, max_length=1000)
    """Only devices at these sites; none: every site."""
    waves: str = Field(default="1,10%,100%", max_length=512)
    """Cumulative steps, e.g. ``1,5%,25%,100%`` or ``ring=canary,10%,100%``."""
    bake_seconds: int = Field(default=600, ge=0, le=WEEK)
    """How long a wave's devices run the new revision before the gates are read."""
    gates: Gates = Field(default_factory=Gates)
    on_failure: Literal["pause", "rollback"] = "rollback"
    offline: Literal["wait", "skip", "fail"] = "wait"
    """A selected device that is offline when its wave starts: wait for it (up to
    ``offline_deadline_seconds``), skip it, or fail the rollout."""
    offline_deadline_seconds: int = Field(default=3600, ge=0, le=WEEK)
    update_timeout_seconds: int = Field(default=1800, ge=1, le=WEEK)
    """An online device moved to the target that reports no outcome within this counts
    as failed (an offline one under ``wait`` gets ``offline_deadline_seconds``)."""
    concurrency: int | None = Field(default=None, ge=1)
    """Devices updating at once; None: a whole wave at once."""
    respect_windows: bool = True
    """Update a site's devices only inside its maintenance windows."""
    seed: str | None = Field(default=None, min_length=1, max_length=64)
    """The rollout key that ranks devices into waves; None: a random one."""

    def steps(self) -> list[Step]:
        """The parsed wave plan; BadRequest (``bad_plan``) with the reason otherwise.

        Parsed here rather than in a validator so the error keeps its own code and words."""
        return parse_steps(self.waves)
