"""The driver: enter a state, persist it, let it act, look up the next one.

A state is written to ``update.json`` (fsynced) *before* it acts, with the number of
steps the attempt has taken, so an agent killed at any instant starts again knowing
where it died. Steps past ``max_steps`` mean the agent keeps dying somewhere: the
driver then sends ``looping`` instead of running the state, which the table turns
into a rollback or a failure, and counts afresh from there, so even a crash loop in
the rollback itself ends.
"""

from __future__ import annotations

import logging

from edgefleet.agent.update import evidence
from edgefleet.agent.update.context import Context
from edgefleet.agent.update.events import Event
from edgefleet.agent.update.states import STATES
from edgefleet.agent.update.transitions import State, next_state
from edgefleet.errors import EdgefleetError

log = logging.getLogger("edgefleet.agent")

DEFAULT_MAX_STEPS = 32
"""A clean update takes 7 steps; each death and each try (at most 10) adds two."""


class Machine:
    def __init__(self, ctx: Context, max_steps: int = DEFAULT_MAX_STEPS) -> None:
        self.ctx = ctx
        self.max_steps = max_steps

    def drive(self, state: State) -> None:
        """Run from ``state`` until the attempt is idle again."""
        with evidence.captured(self.ctx.log_file):
            while state is not State.idle:
                state = next_state(state, self._step(state))
            self._enter(State.idle)

    def resume(self) -> None:
        """Go on with an attempt the agent died in (a no-op when idle)."""
        state = self.ctx.attempt.state
        if state is not State.idle:
            log.warning(
                "the agent stopped during %s of revision %s; resuming",
                state,
                self.ctx.attempt.revision,
            )
            self.drive(next_state(state, Event.interrupted))

    def _step(self, state: State) -> Event:
        self._enter(state)
        a = self.ctx.attempt
        if a.steps > self.max_steps:
            a.reason = (
                f"update loop: {a.steps - 1} steps without finishing; the agent kept dying "
                f"in {state} (last reason: {a.reason or 'none'})"
            )
            log.error("revision %s: %s", a.revision, a.reason)
            a.steps = 0
            return Event.looping
        try:
            return STATES[state].run(self.ctx)
        except (EdgefleetError, OSError) as exc:
            words = exc.message if isinstance(exc, EdgefleetError) else str(exc)
            a.reason = f"{state}: {words}"
            log.warning("revision %s: %s", a.revision, a.reason)
            return Event.failed

    def _enter(self, state: State) -> None:
        a = self.ctx.attempt
        a.state = state
        a.steps = 0 if state is State.idle else a.steps + 1
        self.ctx.store.save(a)
