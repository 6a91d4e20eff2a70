"""What a state reports to the driver, which looks the next state up in the table."""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    done = "done"
    """The state did its work."""
    failed = "failed"
    """It could not; the attempt's ``reason`` says why."""
    exhausted = "exhausted"
    """The slot on trial has no attempts left: every try so far killed the agent."""
    interrupted = "interrupted"
    """Found at start: the agent died while in this state."""
    looping = "looping"
    """The stored step counter passed its limit: the agent keeps dying somewhere."""
