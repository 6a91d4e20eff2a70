"""What the agent calls to update: ``update``, ``recover`` at start, ``retry``.

The engine owns the rules around an attempt: a revision already active is not applied
again; a slot marked bad for a revision is not tried for it again until an operator
retries; an attempt that did not mark the revision bad (a first install that failed,
a pull or write that failed) is tried again only after a growing delay.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edgefleet.agent.files import read_json, write_json
from edgefleet.agent.slots.backend import SlotBackend
from edgefleet.agent.slots.record import BootControl, Record
from edgefleet.agent.update.attempt import Attempt, AttemptStore, Outcome, Request
from edgefleet.agent.update.context import Context, Stager
from edgefleet.agent.update.machine import DEFAULT_MAX_STEPS, Machine
from edgefleet.agent.update.states import RegistryOutage
from edgefleet.agent.update.switch import ModelServing
from edgefleet.agent.update.transitions import State
from edgefleet.errors import EdgefleetError

log = logging.getLogger("edgefleet.agent")


class UpdateRefused(EdgefleetError):
    """The slot failed this revision before; an operator must retry it."""

    default_code = "update_refused"


class UpdateDeferred(EdgefleetError):
    """The revision failed recently without being marked bad; it is tried after a delay."""

    default_code = "update_deferred"


class UpdateEngine:
    def __init__(
        self,
        state_dir: Path,
        slots: SlotBackend,
        serving: ModelServing,
        stager: Stager,
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        retry_base: float = 10.0,
        retry_cap: float = 900.0,
    ) -> None:
        """``state_dir`` holds ``slots/`` (the boot-control record), ``update/`` and
        ``evidence/``; ``retry_base``/``retry_cap`` shape the delay (seconds) before a
        failed revision that was not marked bad is tried again."""
        store = AttemptStore(state_dir / "update")
        self.ctx = Context(
            boot=BootControl(state_dir / "slots"),
            slots=slots,
            serving=serving,
            stager=stager,
            store=store,
            staging=store.folder / "staging",
            evidence=state_dir / "evidence",
        )
        self.machine = Machine(self.ctx, max_steps)
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self._retry_file = store.folder / "retry.json"

    def record(self) -> Record:
        return self.ctx.boot.load()

    def last_outcome(self) -> Outcome | None:
        return self.ctx.store.load_outcome()

    def recover(self) -> None:
        """At start: serve the active good slot, then finish an attempt the agent died in.

        An attempt that died while staging is left for the next ``update`` of its
        revision: the pull needs the controller, and nothing was written yet."""
        try:
            self.ctx.serve_active(self.record())
        except EdgefleetError as exc:  # the attempt below, or the next update, repairs it
            log.error("the active slot does not serve: %s", exc.message)
        attempt = self.ctx.attempt = self.ctx.store.load()
        if attempt.state not in (State.idle, State.staging):
            self.machine.resume()
            self._ended(attempt.revision)

    def update(self, request: Request) -> Outcome | None:
        """Apply ``request``; None if its revision is already the active one.

        Raises UpdateRefused or UpdateDeferred without touching anything, and
        UpdateDeferred when staging met a registry outage: the attempt is dropped with
        no outcome (its downloaded blobs stay in the store), so the next check starts it
        again and the controller sees the device still updating, not failed."""
        try:
            return self._update(request)
        except RegistryOutage as exc:
            self.ctx.attempt.state = State.idle
            self.ctx.attempt.steps = 0
            self.ctx.store.save(self.ctx.attempt)
            log.warning("revision %s waits for its registry: %s", request.revision, exc)
            raise UpdateDeferred(
                f"revision {request.revision} waits for its registry ({exc}); "
                "trying again at the next check",
                code="registry_unreachable",
            ) from exc

    def _update(self, request: Request) -> Outcome | None:
        ctx = self.ctx
        ctx.attempt = ctx.store.load()
        if ctx.attempt.state is not State.idle:
            if ctx.attempt.revision == request.revision:
                self.machine.resume()
                return self._ended(request.revision)
            if ctx.attempt.state is State.staging:
                log.info(
                    "revision %s replaces revision %s being staged",
                    request.revision,
                    ctx.attempt.revision,
                )
            else:
                self.machine.resume()
        record = self.record()
        active = record.active
        if active is not None and record.slots[active].revision == request.revision:
            return None
        target = record.inactive()
        info = record.slots[target]
        if request.revision in info.bad_revisions:
            raise UpdateRefused(
                f"revision {request.revision} was rolled back in slot {target} "
                f"({info.reason or 'see the evidence bundle'}); it is not tried again "
                "until an operator retries it"
            )
        self._check_delay(request.revision)
        ctx.attempt = Attempt.begin(request, target, active)
        ctx.log_file.write_text("")
        self.machine.drive(State.staging)
        return self._ended(request.revision)

    def retry(self, revision: int) -> None:
        """An operator asks for ``revision`` again: forget that slots failed it."""
        record = self.record()
        for info in record.slots.values():
            if revision in info.bad_revisions:
                info.bad_revisions.remove(revision)
        self.ctx.boot.save(record)
        self._retry_file.unlink(missing_ok=True)
        log.info("revision %s may be tried again (operator retry)", revision)

    def close(self) -> None:
        self.ctx.serving.close()

    def _ended(self, revision: int) -> Outcome | None:
        """The outcome of the attempt that just ended; schedules its retry when it failed
        without marking the revision bad."""
        outcome = self.last_outcome()
        if outcome is None or outcome.revision != revision:
            return outcome
        if outcome.outcome == "committed":
            self._retry_file.unlink(missing_ok=True)
        elif revision not in self.record().slots[outcome.slot].bad_revisions:
            doc = read_json(self._retry_file) or {}
            failures = doc.get("failures", 0) + 1 if doc.get("revision") == revision else 1
            delay = min(self.retry_cap, self.retry_base * 2 ** (failures - 1))
            write_json(
                self._retry_file,
                {"revision": revision, "failures": failures, "not_before": time.time() + delay},
            )
            log.warning(
                "revision %s is tried again in %.0f s (failure %d)", revision, delay, failures
            )
        return outcome

    def _check_delay(self, revision: int) -> None:
        doc = read_json(self._retry_file)
        if doc and doc.get("revision") == revision:
            wait = doc["not_before"] - time.time()
            if wait > 0:
                raise UpdateDeferred(
                    f"revision {revision} failed {doc['failures']} time(s) "
                    f"({self._last_reason()}); trying it again in {wait:.0f} s"
                )

    def _last_reason(self) -> str:
        outcome = self.last_outcome()
        return outcome.reason if outcome is not None else "no outcome recorded"
