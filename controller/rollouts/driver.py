"""The rollout engine's thread: every worker process runs one, and the one holding the
lease drives (``lease.py``); the others stand by and take over when it lapses.

The driver steps every running rollout when a device's outcome arrives that may
change what the rollout does (``nudge.py``: a failure, the last success of a wave, a
success that frees room under the concurrency cap, an operator's action), when a
rollout's own timer is due (a bake ends, a window opens, a deadline passes) and at
least every ``rollout_tick_seconds``. It renews its lease every third of its length,
not per step. It never asks devices anything: what it knows comes from their status
reports, stored by whichever worker received them.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from edgefleet.controller.db import reading
from edgefleet.controller.models import Rollout
from edgefleet.controller.rollouts.advance import Advancer
from edgefleet.controller.rollouts.lease import Lease, LostLease, current
from edgefleet.controller.rollouts.nudge import ANY, Waiter
from edgefleet.controller.rollouts.states import RolloutState
from edgefleet.controller.runtime import Runtime

log = logging.getLogger("edgefleet.controller.rollouts")

DEBOUNCE_SECONDS = 0.05
"""After a nudge, outcomes arriving together are stepped as one."""


class _Timer:
    """Stands in for the waiter when it cannot be opened (its socket is still bound by
    a stalled predecessor): the engine then runs on its timer alone."""

    def wait(self, timeout: float) -> list[str]:
        time.sleep(max(0.0, timeout))
        return []

    def drain(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


class Driver:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.lease = Lease(rt.engine, rt.settings.rollout_lease_seconds)
        self.advancer = Advancer(rt, self.lease)
        self._tick = rt.settings.rollout_tick_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiter: Waiter | _Timer | None = None

    def start(self) -> None:
        if not self.rt.settings.rollout_engine or self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="rollout-driver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop driving and hand the lease on at once."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self.rt.nudge.now()
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        renew_at = due = 0.0  # monotonic times: the next lease renewal, the next step
        news: list[str] = []
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= renew_at:
                    if not self._hold():
                        self._stopping.wait(self.lease.seconds / 3 * random.uniform(0.8, 1.2))
                        due = 0.0
                        continue
                    renew_at = now + self.lease.seconds / 3
                if now >= due or self._worth_a_step(news):
                    wait = self._drive()
                    if wait is None:
                        renew_at = 0.0  # ask the lease again before anything else
                        continue
                    due = now + wait
                assert self._waiter is not None
                try:
                    news = self._waiter.wait(min(due, renew_at) - time.monotonic())
                    if news:
                        self._stopping.wait(DEBOUNCE_SECONDS)  # outcomes arriving together
                        news += self._waiter.drain()
                except psycopg.Error as exc:
                    # PostgreSQL restarted under the LISTEN connection: open another
                    # with the lease's next renewal, and step meanwhile as if nudged.
                    log.warning("rollout nudges lost their connection (%s); reconnecting", exc)
                    self._close_waiter()
                    renew_at, news = 0.0, [ANY]
                    self._stopping.wait(1.0)
        finally:
            self._let_go()

    def _worth_a_step(self, news: list[str]) -> bool:
        """Whether the nudges received may change what a rollout does: anything but a
        success while others of its wave are still updating and none waits to move."""
        worth = False
        for item in news:
            rollout, _, outcome = item.partition(" ")
            waiting = self.advancer.waiting
            key = int(rollout) if rollout.isdigit() else None
            if outcome == "succeeded" and key is not None and waiting.get(key, 0) > 1:
                waiting[key] -= 1
            else:
                worth = True
        return worth

    def _hold(self) -> bool:
        """Take or renew the lease; open the waiter when it is newly held."""
        try:
            held = self.lease.acquire()
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:  # the database away
            log.warning("the rollout lease could not be read (%s); standing by", exc.orig)
            held = False
        except Exception:
            log.exception("the rollout lease could not be read; standing by")
            held = False
        if not held:
            if self._waiter is not None:
                log.warning("another process (%s) drives rollouts now", self.current_holder())
                self._waiter.close()
                self._waiter = None
            return False
        if self._waiter is None:
            try:
                self._waiter = Waiter(self.rt.engine)
            except OSError as exc:
                log.warning("rollouts run on their timer only (%s)", exc)
                self._waiter = _Timer()
            except psycopg.Error as exc:
                log.warning("cannot listen for rollout nudges (%s); standing by", exc)
                return False
            log.info("driving rollouts as %s", self.lease.holder)
        return True

    def _drive(self) -> float | None:
        """Step every running rollout; in how many seconds the earliest is due next, or
        None when the lease turned out to be lost."""
        due = time.time() + self._tick
        try:
            for rollout_id in self._running():
                when = self.advancer.advance(rollout_id)
                if when is not None:
                    due = min(due, when.timestamp())
        except LostLease as exc:
            log.warning("%s; standing by", exc)
            return None
        except Exception:
            log.exception("a rollout step failed; retrying on the next tick")
        return max(0.0, due - time.time())

    def _running(self) -> list[int]:
        with reading(self.rt.engine) as conn:
            return list(
                conn.execute(
                    select(Rollout.id)
                    .where(Rollout.state == RolloutState.running)
                    .order_by(Rollout.id)  # type: ignore[arg-type]
                ).scalars()
            )

    def current_holder(self) -> str | None:
        return current(self.rt.engine)[0]

    def _close_waiter(self) -> None:
        if self._waiter is not None:
            with contextlib.suppress(psycopg.Error):  # its connection may be gone already
                self._waiter.close()
            self._waiter = None

    def _let_go(self) -> None:
        if self._waiter is not None:
            self._close_waiter()
            try:
                self.lease.release()
            except Exception:
                log.exception("could not release the rollout lease; it lapses on its own")
