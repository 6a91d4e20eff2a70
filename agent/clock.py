"""The controller's idea of the time, as seen from the device.

Devices boot without an RTC or NTP more often than one would hope, and the
controller refuses assertions whose ``iat``/``exp`` are off. So the agent
keeps the offset between its clock and the ``Date`` header of every answer,
and signs with corrected time.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime


class Clock:
    """Local time plus the last offset learned from the controller."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.observed = False

    def observe(self, date_header: str | None, received_at: float | None = None) -> None:
        """Learn the offset from a ``Date`` header read at local time ``received_at``.

        ``Date`` has one-second resolution and was written before the answer
        arrived, so ``date - received_at`` is a lower bound of the true offset:
        corrected time may run up to about a second behind the controller,
        never ahead, so an assertion is never "issued in the future".
        """
        if not date_header:
            return
        try:
            server = parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError):
            return
        local = time.time() if received_at is None else received_at
        self.offset = server - local
        self.observed = True

    def now(self) -> float:
        """Corrected wall-clock time (seconds since the epoch)."""
        return time.time() + self.offset
