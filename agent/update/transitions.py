"""The update path, as one table: (state, event) -> next state.

Read top to bottom it is DESIGN.md's five steps. ``interrupted`` rows say where the
agent goes on when it finds a state it died in; ``looping`` rows where it gives up
when the step counter says it keeps dying.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.agent.update.events import Event


class State(StrEnum):
    idle = "idle"
    staging = "staging"
    writing = "writing"
    verifying = "verifying"
    arming = "arming"
    trying = "trying"
    checking = "checking"
    committing = "committing"
    rolling_back = "rolling_back"
    failing = "failing"
    reporting = "reporting"


S, E = State, Event

TRANSITIONS: dict[tuple[State, Event], State] = {
    # 1. stage: download (resumable), verify every digest
    (S.staging, E.done): S.writing,
    (S.staging, E.failed): S.failing,
    (S.staging, E.interrupted): S.staging,
    (S.staging, E.looping): S.failing,
    # 2. write the inactive slot, read it back from the medium and verify
    (S.writing, E.done): S.verifying,
    (S.writing, E.failed): S.failing,
    (S.writing, E.interrupted): S.writing,
    (S.writing, E.looping): S.failing,
    (S.verifying, E.done): S.arming,
    (S.verifying, E.failed): S.failing,
    (S.verifying, E.interrupted): S.verifying,
    (S.verifying, E.looping): S.failing,
    # 3. mark it trying, decrement and fsync the attempts left before every try, switch
    (S.arming, E.done): S.trying,
    (S.arming, E.failed): S.failing,
    (S.arming, E.interrupted): S.arming,
    (S.arming, E.looping): S.failing,
    (S.trying, E.done): S.checking,
    (S.trying, E.failed): S.rolling_back,
    (S.trying, E.exhausted): S.rolling_back,
    (S.trying, E.interrupted): S.trying,
    (S.trying, E.looping): S.rolling_back,
    # 4. health checks within a deadline (a try the agent died in is tried again)
    (S.checking, E.done): S.committing,
    (S.checking, E.failed): S.rolling_back,
    (S.checking, E.interrupted): S.trying,
    (S.checking, E.looping): S.rolling_back,
    # 5. commit (mark good, make active) or roll back (mark bad, switch back), report
    (S.committing, E.done): S.reporting,
    (S.committing, E.failed): S.rolling_back,
    (S.committing, E.interrupted): S.committing,
    (S.committing, E.looping): S.rolling_back,
    (S.rolling_back, E.done): S.reporting,
    (S.rolling_back, E.failed): S.failing,
    (S.rolling_back, E.interrupted): S.rolling_back,
    (S.rolling_back, E.looping): S.failing,
    (S.failing, E.done): S.reporting,
    (S.failing, E.failed): S.reporting,
    (S.failing, E.interrupted): S.failing,
    (S.failing, E.looping): S.reporting,
    (S.reporting, E.done): S.idle,
    (S.reporting, E.failed): S.idle,
    (S.reporting, E.interrupted): S.reporting,
    (S.reporting, E.looping): S.idle,
}


def next_state(state: State, event: Event) -> State:
    """KeyError for a pair the table lacks: a bug, never a device's condition."""
    return TRANSITIONS[(state, event)]
