"""What an operator asks of a rollout: one document for the dry run and for
``create``, so that a plan that was shown is the rollout that runs.

``seed`` is the rollout key that ranks devices into waves (``plan.assign``). A plan
without one draws a random seed and answers with it; passing that seed back (to a
second plan or to ``create``) gives the same waves for the same selection, and a device
that joined since lands where its own hash puts it without moving the others.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    """Shadow phase: top-1 agreement of each candidate model with the active one, at
    least (read over the compared inferences whose output is class scores)."""
    max_mad: float | None = Field(default=None, ge=0)
    """Shadow phase: mean absolute difference of each candidate's outputs from the active
    model's, at most."""
    max_drift: float | None = Field(default=None, ge=0)
    """Shadow phase: the worst PSI of the live inputs the wave's devices compared the
    candidates on, scored against the model's drift reference (``rollouts/shadow.py``),
    at most."""
    min_shadow_samples: int = Field(default=100, ge=0)
    """Shadow phase: compared inferences each candidate model needs; fewer fails the
    gate (too little evidence)."""

    def shadow_gates(self) -> list[str]:
        """The shadow gates set, by name."""
        return [
            name
            for name in ("min_agreement", "max_mad", "max_drift")
            if getattr(self, name) is not None
        ]


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
    shadow_seconds: int = Field(default=0, ge=0, le=WEEK)
    """Before a wave's devices are moved, they run the target's changed models in shadow
    for this long (0: no shadow phase); the shadow gates are read at its end."""
    shadow_sample_rate: float = Field(default=1.0, gt=0, le=1)
    """The share of live inferences the candidates also run during the shadow phase."""
    shadow_window_seconds: int = Field(default=60, ge=1, le=86400)
    """The devices' agreement windows. Only windows delivered by the phase's end count:
    an agent reports a window some seconds after it closes, with its next status report,
    so a phase should last a few windows plus the devices' report interval."""

    @model_validator(mode="after")
    def _shadow_consistent(self) -> RolloutSpec:
        if self.shadow_seconds == 0 and self.gates.shadow_gates():
            raise ValueError(
                f"gates {', '.join(self.gates.shadow_gates())} are read at the end of a "
                "shadow phase: set shadow_seconds above 0, or drop them"
            )
        if 0 < self.shadow_seconds < self.shadow_window_seconds:
            raise ValueError(
                f"shadow_seconds {self.shadow_seconds} is shorter than one agreement window "
                f"(shadow_window_seconds {self.shadow_window_seconds}): no window would "
                "close within the shadow phase"
            )
        return self

    def steps(self) -> list[Step]:
        """The parsed wave plan; BadRequest (``bad_plan``) with the reason otherwise.

        Parsed here rather than in a validator so the error keeps its own code and words."""
        return parse_steps(self.waves)
