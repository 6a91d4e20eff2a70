"""``SlotApplier``: the ``Applier`` of direct mode on A/B slots, with health-check rollback.

A drop-in for ``serving.DirectApplier`` (same constructor, with more defaults): each
revision's models are pulled by digest (site mirrors first), written to the inactive
slot, read back, tried on candidate sockets beside the running set, checked against the
profile's health policy and committed or rolled back. Constructing it serves the
active slot and finishes an update the agent died in, so a restarted agent serves
before it has spoken to the controller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.results import RESULTS_FOLDER
from edgefleet.agent.slots.backend import SlotBackend
from edgefleet.agent.slots.folder import FolderSlots
from edgefleet.agent.slots.record import Record
from edgefleet.agent.update.attempt import Outcome, Request
from edgefleet.agent.update.engine import UpdateEngine
from edgefleet.agent.update.modelset import StagedModel
from edgefleet.agent.update.shadowing import ShadowCandidates
from edgefleet.agent.update.switch import ModelServing
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.wire import CheckResult, DesiredState, ModelRef

if TYPE_CHECKING:  # loaded on the first pull: an agent that pulls nothing carries no OCI client
    from edgefleet.agent.oci.pull import Puller
    from edgefleet.agent.runner.supervisor import Runner

log = logging.getLogger("edgefleet.agent")


class UpdateFailed(EdgefleetError):
    """The revision was rolled back or failed; the running set keeps serving."""

    default_code = "update_failed"


class SlotApplier:
    def __init__(
        self,
        state_dir: Path,
        socket_dir: Path,
        token: Callable[[str], str],
        mirrors: list[str] | None = None,
        threads: int = 1,
        *,
        slots: SlotBackend | None = None,
        retry_base: float = 10.0,
        retry_cap: float = 900.0,
    ) -> None:
        """``token(scope)`` gets a registry pull token (from the controller); ``slots``
        defaults to folders under ``<state_dir>/slots-data``."""
        self._models = state_dir / "models"
        self._token = token
        self._mirrors = mirrors or []
        self._puller: Puller | None = None
        serving = ModelServing(
            socket_dir, state_dir / RESULTS_FOLDER, state_dir / "update" / RESULTS_FOLDER, threads
        )
        self._shadow = ShadowCandidates(state_dir, self._new_puller)
        serving.shadow = self._shadow.recover()  # the main runners start with it
        self.engine = UpdateEngine(
            state_dir,
            slots or FolderSlots(state_dir / "slots-data"),
            serving,
            self._stage,
            retry_base=retry_base,
            retry_cap=retry_cap,
        )
        self.engine.recover()

    def apply(self, desired: DesiredState) -> int:
        """Returns once the revision serves on the main sockets (or already did); raises
        UpdateFailed (rolled back, or failed before trying), UpdateRefused (failed here
        before) or UpdateDeferred (retried later), the running set still serving."""
        record = self.engine.record()
        if not desired.models:
            if record.active is None:
                return desired.revision
            raise ConfigError(
                f"revision {desired.revision} names no models, and a slot never holds an "
                f"empty set; the device keeps serving revision "
                f"{record.slots[record.active].revision}"
            )
        request = Request(
            desired.revision,
            [m.model_dump(mode="json") for m in desired.models],
            _policies(desired),
        )
        outcome = self.engine.update(request)
        if outcome is not None and outcome.outcome != "committed":
            raise UpdateFailed(
                f"revision {desired.revision} {outcome.outcome.replace('_', ' ')} in slot "
                f"{outcome.slot}: {outcome.reason} (evidence: {outcome.evidence})",
                code=f"update_{outcome.outcome}",
            )
        return desired.revision

    def apply_shadow(self, desired: DesiredState) -> float:
        """Run the desired state's shadow plan (none: stop any): pull its candidates
        and replace the runners whose candidate changed (a takeover of their socket:
        callers keep being answered). A candidate that cannot be had is left out and
        reported (``shadow_checks``); the revision is not touched. Returns the seconds
        the runners' switch took (0: nothing changed)."""
        serving = self.engine.ctx.serving
        signatures = desired.model_signatures
        specs = self._shadow.prepare(
            desired.shadow,
            signatures.model_dump(mode="json") if signatures is not None else None,
            serving.shadow,
        )
        if specs == serving.shadow:
            return 0.0
        took = serving.set_shadow(specs)
        log.info(
            "shadow plan: %s (runners switched in %.0f ms)",
            ", ".join(f"{s.key} beside {n}" for n, s in sorted(specs.items())) or "none",
            took * 1000,
        )
        return took

    def shadow_checks(self) -> list[CheckResult]:
        """What keeps a candidate of the plan from running: not pulled or refused here,
        or refused by its runner (inputs that do not match the active model's)."""
        serving = self.engine.ctx.serving
        checks = [
            CheckResult(name=f"shadow {name}", ok=False, detail=reason[:2048])
            for name, reason in sorted(self._shadow.problems.items())
        ]
        for name, spec in sorted(serving.shadow.items()):
            runner = serving.main.get(name)
            if runner is None:
                detail = f"no active model named {name} to run {spec.key} beside"
                checks.append(CheckResult(name=f"shadow {name}", ok=False, detail=detail))
                continue
            try:
                state = runner.health().get("shadow")
            except EdgefleetError:
                continue  # restarting: the next report says
            if state is not None and not state["running"]:
                detail = f"{spec.key}: {state['reason']}"[:2048]
                checks.append(CheckResult(name=f"shadow {name}", ok=False, detail=detail))
        return checks

    def retry(self, revision: int) -> None:
        """An operator's retry of a revision a slot failed."""
        self.engine.retry(revision)

    def last_outcome(self) -> Outcome | None:
        return self.engine.last_outcome()

    def runners(self) -> list[Runner]:
        """The runners serving the active set (for their inference figures)."""
        return list(self.engine.ctx.serving.main.values())

    def slots(self) -> Record:
        """The boot-control record: both slots' state, revision and reason, the active one."""
        return self.engine.record()

    def close(self) -> None:
        self.engine.close()
        self._shadow.close()
        if self._puller is not None:
            self._puller.close()

    def _stage(self, request: Request) -> list[StagedModel]:
        from edgefleet.agent.update import signature_check  # the OCI client, as _puller_once

        puller = self._puller_once()
        keys = signature_check.required_keys(request.policies.get("model_signatures"))
        drift = request.policies.get("drift")
        staged = []
        for doc in request.models:
            ref = ModelRef.model_validate(doc)
            if keys is not None:  # before any blob of the model is downloaded
                signature_check.check(puller, ref, keys)
            pulled = puller.pull(ref.reference, ref.origin or None)
            staged.append(
                StagedModel(
                    name=ref.name,
                    path=pulled.path,
                    digest=pulled.model_digest,
                    version=pulled.version or "",
                    reference=pulled.reference,
                    probe=pulled.probe.to_bytes() if pulled.probe is not None else None,
                    drift_reference=pulled.drift_reference,
                    drift=drift,
                )
            )
        return staged

    def _puller_once(self) -> Puller:
        if self._puller is None:
            self._puller = self._new_puller(self._models)
        return self._puller

    def _new_puller(self, folder: Path) -> Puller:
        """A puller into the blob store at ``folder``: the revision's models, or the
        shadow candidates."""
        from edgefleet.agent.oci.pull import Puller
        from edgefleet.agent.oci.store import BlobStore

        return Puller(BlobStore(folder), mirrors=self._mirrors, token=self._token)


def _policies(desired: DesiredState) -> dict[str, Any]:
    """The profile's health policy in the shape ``health.policy`` reads (``policies``),
    its ``model_signatures`` for the staging step (``signature_check``) and its
    ``drift`` policy, which the staged set keeps for the runners."""
    policies: dict[str, Any] = {}
    if desired.drift is not None:
        policies["drift"] = desired.drift.model_dump(mode="json")
    if desired.model_signatures is not None:
        policies["model_signatures"] = desired.model_signatures.model_dump(mode="json")
    if desired.health is None:
        return policies
    health = desired.health.model_dump(mode="json")
    return {
        **policies,
        "health_checks": health["checks"],
        "health_deadline_seconds": health["deadline_seconds"],
        "max_attempts": health["max_attempts"],
    }
