"""The candidates a shadow plan names: pulled, checked, kept apart from the A/B slots.

A candidate is pulled as the revision's models are (same puller settings: mirrors
first, the controller's registry tokens, every digest verified) but into its own blob
store, ``<state dir>/shadow/``, which holds only the plan's candidates: a candidate the
plan no longer names is deleted. When the profile requires model signatures, a
candidate nobody trusted signed is not run. A candidate that cannot be had (refused
signature, missing blob, registry down) is left out and its reason kept for the status
report: the active model serves on, and the revision is never touched. The plan that
runs is written to ``shadow/plan.json``, so a restarted agent runs it again before it
has spoken to the controller.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.files import read_json, write_json
from edgefleet.agent.update.switch import ShadowSpec
from edgefleet.errors import EdgefleetError
from edgefleet.wire import ShadowPlan

if TYPE_CHECKING:
    from edgefleet.agent.oci.pull import Puller

log = logging.getLogger("edgefleet.agent")

SHADOW_FOLDER = "shadow"
PLAN_FILE = "plan.json"


class ShadowCandidates:
    def __init__(self, state_dir: Path, make_puller: Callable[[Path], Puller]) -> None:
        """``make_puller(folder)``: a puller into a blob store at ``folder``."""
        self.folder = state_dir / SHADOW_FOLDER
        self._make_puller = make_puller
        self._puller: Puller | None = None
        self.problems: dict[str, str] = {}
        """By active model name: why its candidate does not run."""

    def recover(self) -> dict[str, ShadowSpec]:
        """The plan that ran before the agent stopped, for the candidates still on disk."""
        try:
            doc = read_json(self.folder / PLAN_FILE) or {}
            specs = {
                name: ShadowSpec(**{**fields, "model": Path(fields["model"])})
                for name, fields in doc.items()
            }
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # a shadow is never worth a device that does not start
            log.error(
                "shadow plan %s unreadable, running none until the desired state changes: %s",
                self.folder / PLAN_FILE,
                exc,
            )
            return {}
        return {name: spec for name, spec in specs.items() if spec.model.is_file()}

    def prepare(
        self,
        plan: ShadowPlan | None,
        signatures: dict[str, Any] | None,
        running: dict[str, ShadowSpec],
    ) -> dict[str, ShadowSpec]:
        """The candidates of ``plan`` that can run, by active model name, pulled and
        checked; the rest are in ``problems``. ``running`` are the ones running now: a
        candidate already running is not checked again (a registry outage does not
        stop it)."""
        from edgefleet.agent.update import signature_check  # the OCI client, with the puller

        self.problems = {}
        specs: dict[str, ShadowSpec] = {}
        keep: set[str] = set()
        for wanted in plan.models if plan is not None else []:
            name, ref = wanted.active, wanted.model
            if name in specs:
                self.problems[name] = f"the plan names a second candidate ({wanted.key})"
                continue
            now = running.get(name)
            try:
                if now is None or now.reference != ref.reference:
                    puller = self._puller_once()
                    keys = signature_check.required_keys(signatures)
                    if keys is not None:  # before any blob of it is downloaded
                        signature_check.check(puller, ref, keys)
                pulled = self._puller_once().pull(ref.reference, ref.origin or None)
            except EdgefleetError as exc:
                self.problems[name] = f"candidate {ref.reference} ({wanted.key}): {exc.message}"
                log.warning("shadow candidate for %s not run: %s", name, self.problems[name])
                continue
            specs[name] = ShadowSpec(
                key=wanted.key,
                model=pulled.path,
                digest=pulled.model_digest,
                reference=pulled.reference,
                sample_rate=plan.sample_rate if plan is not None else 1.0,
                window_seconds=float(plan.window_seconds) if plan is not None else 300.0,
            )
            keep.add(pulled.digest)
        self._prune(keep)
        if not specs and not (self.folder / PLAN_FILE).exists():
            return specs  # no plan ever: no folder made for nothing
        write_json(
            self.folder / PLAN_FILE,
            {
                name: {
                    "key": s.key,
                    "model": str(s.model),
                    "digest": s.digest,
                    "reference": s.reference,
                    "sample_rate": s.sample_rate,
                    "window_seconds": s.window_seconds,
                }
                for name, s in specs.items()
            },
        )
        return specs

    def close(self) -> None:
        if self._puller is not None:
            self._puller.close()

    def _puller_once(self) -> Puller:
        if self._puller is None:
            self._puller = self._make_puller(self.folder)
        return self._puller

    def _prune(self, manifests: set[str]) -> None:
        """Delete every blob and partial download but those of the kept manifests."""
        from edgefleet.models.artifact import describe
        from edgefleet.oci.manifest import Manifest

        if self._puller is None and not manifests:
            if (self.folder / "blobs").exists():
                shutil.rmtree(self.folder / "blobs")
                shutil.rmtree(self.folder / "ingest", ignore_errors=True)
            return
        store = self._puller_once().store
        keep = set()
        for digest in manifests:
            found = describe(Manifest.from_bytes(store.read(digest)))
            layers = [found.model, found.probe, found.reference]
            keep |= {digest, *(d.digest for d in layers if d is not None)}
        hexes = {d.split(":", 1)[1] for d in keep}
        for path in store.blobs.iterdir():
            if path.name not in hexes:
                path.unlink(missing_ok=True)
                log.info("shadow candidate blob %s deleted (no longer in the plan)", path.name)
        for path in store.ingest.iterdir():
            if path.name.split(".", 1)[0] not in hexes:
                path.unlink(missing_ok=True)
