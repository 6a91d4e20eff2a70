"""A wave's shadow phase (issue 14): before its devices are moved to the target, they
run the target's changed models beside their active ones on the same live inputs (only
the active ones answer) and report agreement windows; the shadow gates read those
windows when the phase ends.

**Candidates.** A model of the target revision is a candidate when a model of the same
name runs on the device now with another reference; a model new in the target has no
active twin whose inputs it could share, and a revision that changes no model has no
shadow phase at all (the plan says so).

**Who runs it.** The devices of the current wave not moved yet, while the rollout is
running or paused by an operator and the wave is ``shadowing`` with no failed gate: a
failed gate, an abort or a rollback ends the shadow at once. Devices read it in their
desired state (``Runtime._build_desired``), keyed ``rollout-<id>``; a K3s-mode device
reads its desired state from the fleet repository, which carries no shadow plan, so a
rollout of a ``mode: k3s`` profile refuses a shadow phase.

**Offline devices.** The shadow phase waits for nobody: a device offline during it
gets the plan when it returns (if the phase still runs) and contributes what it
reports; the evidence is what the wave's online devices said, and
``min_shadow_samples`` fails a phase with too little of it. The rollout's ``offline``
policy then applies, as for any wave, when the devices are moved.

**Pause** keeps the comparison running (it moves nothing, and its windows keep
arriving); on resume the gates are read when the phase ends, at once if it ended
meanwhile. Resuming a rollout paused by a failed shadow gate accepts the gate: the
evidence keeps who did, and the wave's devices are moved.

**Gates**, per candidate model, over the windows the wave's devices reported for the
key and the candidate's digest: fewer than ``min_shadow_samples`` compared inferences
fails (too little evidence: offline devices, too short a phase), then
``min_agreement`` (top-1; a model whose outputs are not class scores cannot show it and
fails it, with a message saying so), ``max_mad``, and ``max_drift``: the worst PSI of
the live inputs the wave's devices saw during the phase (their drift windows of the
model, summed per window and scored against the model's drift reference as the fleet
view does). The agent compares the candidate's outputs, not its input binning, so the
drift the gate can read is that of the inputs both models shared: a candidate checked
on inputs far from what the model was validated on proves little.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from edgefleet.controller.models import (
    ProfileRevision,
    Rollout,
    RolloutDevice,
    RolloutWave,
)
from edgefleet.controller.rollouts.gates import Verdict
from edgefleet.controller.rollouts.spec import Gates, RolloutSpec
from edgefleet.controller.rollouts.states import ACTIVE, DeviceOutcome, WaveState


def key_of(rollout_id: int) -> str:
    return f"rollout-{rollout_id}"


def changed_models(
    current: Iterable[dict[str, Any]], target: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The target's models that run now under the same name with another reference."""
    now = {m["name"]: m["reference"] for m in current}
    return [m for m in target if m["name"] in now and now[m["name"]] != m["reference"]]


def digest_of(reference: str) -> str:
    return reference.rsplit("@", 1)[-1]


@dataclass(frozen=True)
class ShadowWave:
    """A wave in its shadow phase, as the desired-state builder needs it."""

    rollout_id: int
    profile_id: int
    devices: frozenset[str]
    target_models: tuple[dict[str, Any], ...]
    sample_rate: float
    window_seconds: int


def shadow_waves(engine: Engine) -> list[ShadowWave]:
    """Every wave in its shadow phase now: one read per cache epoch, none of a device's."""
    with Session(engine) as s:
        rows = s.execute(
            select(Rollout, RolloutWave, ProfileRevision.spec)
            .join(RolloutWave, RolloutWave.rollout_id == Rollout.id)  # type: ignore[arg-type]
            .join(
                ProfileRevision,
                (ProfileRevision.profile_id == Rollout.profile_id)
                & (ProfileRevision.number == Rollout.target_revision),
            )
            .where(
                Rollout.state.in_([a.value for a in ACTIVE]),  # type: ignore[attr-defined]
                RolloutWave.number == Rollout.current_wave,
                RolloutWave.state == WaveState.shadowing,
            )
        ).all()
        out = []
        for r, wave, target in rows:
            if wave.gate is not None and not wave.gate.get("ok"):
                continue  # its gate failed: the shadow ended there
            devices = s.scalars(
                select(RolloutDevice.device_id).where(
                    RolloutDevice.rollout_id == r.id,
                    RolloutDevice.wave == wave.number,
                    RolloutDevice.state == DeviceOutcome.pending,
                )
            ).all()
            spec = RolloutSpec.model_validate(r.spec)
            out.append(
                ShadowWave(
                    r.id,
                    r.profile_id,
                    frozenset(devices),
                    tuple(target.get("models", [])),
                    spec.shadow_sample_rate,
                    spec.shadow_window_seconds,
                )
            )
    return out


def evidence(
    gates: Gates,
    candidates: list[dict[str, Any]],
    windows: list[Any],
    figures: Callable[[Iterable[Any]], dict[str, Any]],
    drift: Callable[[str], dict[str, Any] | None] | None = None,
) -> tuple[Verdict, dict[str, Any]]:
    """The shadow gates' verdict over the wave's ``windows``, and the evidence kept with
    the wave: the figures of each candidate model, the devices and compared inferences.
    ``drift(model)`` gives the worst PSI of the model's live inputs during the phase
    (``{"psi", "histogram"}``, None when nothing scored)."""
    per_model = []
    failures: list[str] = []
    for m in candidates:
        digest = digest_of(m["reference"])
        mine = [w for w in windows if w.model == m["name"] and w.candidate_digest == digest]
        found = {"model": m["name"], "candidate": m["reference"], **figures(mine)}
        if drift is not None and gates.max_drift is not None:
            found["drift"] = drift(m["name"])
        per_model.append(found)
        failures.extend(_failures(gates, found))
    verdict = Verdict(
        not failures,
        "; ".join(failures) if failures else _passed(gates, per_model),
    )
    devices = {w.device_id for w in windows if any(w.model == f["model"] for f in per_model)}
    return verdict, {
        "models": per_model,
        "devices": len(devices),
        "compared": sum(f["compared"] for f in per_model),
        "verdict": verdict.public(),
    }


def _failures(gates: Gates, f: dict[str, Any]) -> list[str]:
    name, compared, devices = f["model"], f["compared"], f["devices"]
    over = f"over {compared} compared inference(s) on {devices} device(s)"
    if compared < gates.min_shadow_samples or compared == 0:
        return [
            f"model {name!r}: only {compared} compared inference(s) from {devices} device(s) "
            f"during the shadow phase, below the min_shadow_samples {gates.min_shadow_samples} "
            "required (too little evidence: were the devices online and serving?)"
        ]
    out = []
    if gates.min_agreement is not None:
        if f["agreement"] is None:
            out.append(
                f"model {name!r}: no compared output reads as class scores, so top-1 "
                f"agreement cannot be measured for the min_agreement gate "
                f"{gates.min_agreement:.1%}; use max_mad for it"
            )
        elif f["agreement"] < gates.min_agreement:
            out.append(
                f"model {name!r}: top-1 agreement {f['agreement']:.1%} {over}, below the "
                f"min_agreement {gates.min_agreement:.1%} required"
            )
    if gates.max_mad is not None and f["mad"] is not None and f["mad"] > gates.max_mad:
        out.append(
            f"model {name!r}: mean absolute difference {f['mad']:.4g} {over}, above the "
            f"max_mad {gates.max_mad:g} allowed"
        )
    if gates.max_drift is not None:
        drift = f.get("drift")
        if drift is None:
            out.append(
                f"model {name!r}: no drift window of the wave's devices scored during the "
                f"shadow phase, so the max_drift gate {gates.max_drift:g} has no evidence "
                "(does the profile have a drift section, and the model a drift reference?)"
            )
        elif drift["psi"] > gates.max_drift:
            out.append(
                f"model {name!r}: input drift PSI {drift['psi']:.3f} ({drift['histogram']}) "
                f"during the shadow phase, above the max_drift {gates.max_drift:g} allowed"
            )
    return out


def _passed(gates: Gates, per_model: list[dict[str, Any]]) -> str:
    notes = []
    for f in per_model:
        parts = [f"{f['compared']} compared on {f['devices']} device(s)"]
        if f["agreement"] is not None:
            parts.append(f"top-1 agreement {f['agreement']:.1%}")
        if f["mad"] is not None:
            parts.append(f"MAD {f['mad']:.4g}")
        if f.get("drift"):
            parts.append(f"input PSI {f['drift']['psi']:.3f}")
        notes.append(f"model {f['model']!r}: " + ", ".join(parts))
    return "; ".join(notes) or "no model to compare"
