"""The controller's one writer of the fleet repositories: a thread per worker process,
one writer at a time across processes and replicas.

Every write holds an exclusive lock on ``<root>/.writer.lock`` and reads the database
only once it holds it, so whichever process writes next writes the newest intent, and
two writers never interleave commits or put back an older state.

An operator's change (``change()``) holds that lock around its own transaction and
writes right after it commits, so it gets a commit of its own naming who and why, and
the answer names that commit. Enrolments are debounced (``gitops_debounce_seconds``)
through the thread, so a site whose devices power on together makes one commit. A
failed write (a full disk, a remote that refuses the push) is retried with backoff and
reported in ``status()`` and the metrics; the intent is in the database and nothing is
lost. At start, and every ``gitops_resync_seconds``, the whole fleet is written again
(no commit when nothing changed), which also catches what a stopped process never wrote.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from edgefleet.controller.gitops import fleet
from edgefleet.controller.gitops.model import GitopsParams, repository_root
from edgefleet.controller.gitops.sync import repository, sync
from edgefleet.controller.metrics import Metrics
from edgefleet.controller.settings import Settings

log = logging.getLogger("edgefleet.controller.gitops")
SYSTEM = "Edgefleet"
MAX_BACKOFF = 60.0
NOT_WRITER = "this controller does not write the fleet repositories"
FULL_WRITE_STAMP = ".last-full-write"
"""Touched after every whole-fleet write: a worker's own resync skips when it is newer."""


@dataclass
class Outcome:
    """What became of a request: the commits made (``None`` where a repository was
    already up to date) and each repository's head after the write, which holds the
    change (another process may have written it first); or why it is still pending."""

    commits: dict[str, str | None] = field(default_factory=dict)
    heads: dict[str, str | None] = field(default_factory=dict)
    pending: str | None = None

    def public(self) -> dict[str, Any]:
        if self.pending is not None:
            return {"pending": self.pending}
        return {"commits": self.commits, "heads": self.heads}


@dataclass
class _Batch:
    sites: set[str] | None
    """None: every site."""
    reasons: list[tuple[str, str]]
    title: str | None
    due: float
    attempts: int = 0
    resync: bool = False
    """A whole-fleet write of the writer's own: skipped when another process finished
    one after this was asked for (every worker of a replica starts with one)."""
    asked_at: float = field(default_factory=time.time)

    def absorb(self, other: _Batch) -> None:
        if self.sites is None or other.sites is None:
            self.sites = None
        else:
            self.sites |= other.sites
        self.reasons += other.reasons
        self.due = min(self.due, other.due)


@dataclass
class Change:
    """An operator's change of intent in the making: the service fills in where it lands
    and why while the writer's lock is held, and finds the outcome here afterwards."""

    who: str
    why: str = ""
    sites: set[str] | None = field(default_factory=set)
    """Sites whose repositories the change touches (None: every site; empty: none)."""
    title: str | None = None
    outcome: Outcome = field(default_factory=Outcome)


class GitopsWriter:
    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.params = GitopsParams.from_settings(settings)
        self.root = repository_root(settings).resolve()
        self.enabled = settings.gitops_writer
        self._engine = engine
        self._metrics = metrics
        self._debounce = settings.gitops_debounce_seconds
        self._wait = settings.gitops_wait_seconds
        self._resync = settings.gitops_resync_seconds
        self._cond = threading.Condition()
        self._queue: list[_Batch] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._writing = False
        self._next_resync = 0.0
        self._last_ok: datetime | None = None
        self._last_error: str | None = None
        self._failing_since: datetime | None = None
        self._last_commits: dict[str, str | None] = {}

    # -- what services call -----------------------------------------------------------

    @contextmanager
    def change(self, who: str) -> Iterator[Change]:
        """Hold the writer's lock around an operator's transaction, then write its result.

        No other writer, in this process or another, can read the database between the
        transaction's commit and this write, so the change gets a commit of its own that
        names its author and reason. Waits for the lock at most ``gitops_wait_seconds``
        (another process may be writing the whole fleet); past that the transaction
        still runs and its write is queued.
        """
        change = Change(who)
        if not self.enabled:
            yield change
            change.outcome = Outcome(pending=NOT_WRITER)
            return
        with self._exclusive(self._wait) as held:
            yield change
            if change.sites is not None and not change.sites:
                return  # nothing the repositories show changed
            if not held:
                self.queue(change.sites, who, change.why, title=change.title)
                change.outcome = Outcome(
                    pending=f"another write held the repositories for over {self._wait:g} s; queued"
                )
                return
            try:
                change.outcome = self._attempt(change.sites, who, change.why, change.title)
            except Exception as exc:
                batch = _Batch(change.sites, [(who, change.why)], change.title, time.monotonic())
                change.outcome = self._failed(batch, exc)

    def queue(
        self, sites: Collection[str] | None, who: str, why: str, *, title: str | None = None
    ) -> None:
        """Write the repositories of ``sites`` (None: all) from the database, debounced
        (``gitops_debounce_seconds``): a change nobody waits for, such as an enrolment."""
        if not self.enabled:
            return
        names = None if sites is None else set(sites)
        batch = _Batch(names, [(who, why)], title, time.monotonic() + self._debounce)
        with self._cond:
            self._ensure_thread()
            last = self._queue[-1] if self._queue else None
            if last is not None and last.title is None and title is None and last.attempts == 0:
                last.absorb(batch)
            else:
                self._queue.append(batch)
            self._cond.notify_all()

    def status(self) -> dict[str, Any]:
        with self._cond:
            pending = len(self._queue) + self._writing
        return {
            "enabled": self.enabled,
            "root": str(self.root),
            "applier": self.params.applier,
            "repositories": "per-site" if self.params.per_site else "fleet",
            "remote": self.params.remote,
            "sites_can_pull": bool(self.params.remote),
            "pending": pending,
            "last_success_at": self._last_ok.isoformat() if self._last_ok else None,
            "last_error": self._last_error,
            "failing_since": self._failing_since.isoformat() if self._failing_since else None,
            "last_commits": {k: v for k, v in self._last_commits.items() if v},
        }

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Bring every repository up to date in the background, then keep it so."""
        if not self.enabled:
            return
        with self._cond:
            self._ensure_thread()
            self._next_resync = time.monotonic()
            self._cond.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued (debounced or not), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._thread = None
            self._stopping = False

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="gitops-writer", daemon=True)
            self._thread.start()

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                return
            self._write(batch)

    def _next(self) -> _Batch | None:
        with self._cond:
            while True:
                now = time.monotonic()
                for i, batch in enumerate(self._queue):
                    if self._stopping or batch.due <= now:
                        self._writing = True
                        return self._queue.pop(i)
                if self._next_resync and self._next_resync <= now and not self._stopping:
                    self._next_resync = now + self._resync if self._resync > 0 else 0.0
                    why = "bring the repositories up to date with the database"
                    self._writing = True
                    return _Batch(None, [(SYSTEM, why)], None, now, resync=True)
                if self._stopping:
                    return None
                deadlines = [b.due for b in self._queue]
                if self._next_resync:
                    deadlines.append(self._next_resync)
                self._cond.wait(max(0.0, min(deadlines) - now) if deadlines else None)

    def _write(self, batch: _Batch) -> None:
        who = batch.reasons[0][0]
        whys = list(dict.fromkeys(why for _, why in batch.reasons))
        why = "; ".join(whys[:5]) + (f"; and {len(whys) - 5} more" if len(whys) > 5 else "")
        if len({w for w, _ in batch.reasons}) > 1:
            why += " (asked by " + ", ".join(sorted({w for w, _ in batch.reasons})) + ")"
        stamp = self.root / FULL_WRITE_STAMP
        try:
            with self._exclusive():
                if not (
                    batch.resync and stamp.exists() and stamp.stat().st_mtime >= batch.asked_at
                ):
                    self._attempt(batch.sites, who, why, batch.title)
        except Exception as exc:
            self._failed(batch, exc)
        finally:
            with self._cond:
                self._writing = False

    def _attempt(
        self, sites: Collection[str] | None, who: str, why: str, title: str | None
    ) -> Outcome:
        """One write, with the lock held: read the intent, render, commit, push."""
        started = time.perf_counter()
        names = None if sites is None or not self.params.per_site else set(sites)
        state = fleet.load(self._engine, names)
        commits = sync(self.root, self.params, state, who, why, title)
        if names is None:
            (self.root / FULL_WRITE_STAMP).touch()
        heads = {n: repository(self.root, n, self.params.branch).head() for n in commits}
        self._metrics.gitops_seconds.observe(time.perf_counter() - started)
        made = sum(1 for c in commits.values() if c)
        if made:
            self._metrics.gitops_commits.inc(made)
        with self._cond:
            self._last_ok = datetime.now(UTC)
            self._last_error = self._failing_since = None
            self._last_commits.update(commits)
        return Outcome(commits, heads)

    def _failed(self, batch: _Batch, exc: Exception) -> Outcome:
        """Record the failure and queue the batch again after a backoff."""
        batch.attempts += 1
        delay = min(MAX_BACKOFF, 2.0 ** (batch.attempts - 1))
        message = f"{exc.__class__.__name__}: {exc}"
        log.error("writing the fleet repository failed (retry in %.0f s): %s", delay, message)
        self._metrics.gitops_failures.inc()
        with self._cond:
            self._last_error = message
            self._failing_since = self._failing_since or datetime.now(UTC)
            if not self._stopping:  # else the next start's full write catches up
                batch.due = time.monotonic() + delay
                self._queue.insert(0, batch)
                self._ensure_thread()
                self._cond.notify_all()
        return Outcome(pending=f"{message}; retrying")

    @contextmanager
    def _exclusive(self, timeout: float | None = None) -> Iterator[bool]:
        """The lock every writer on this root takes; yields whether it is held (False
        only when ``timeout`` ran out)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".writer.lock").open("a") as handle:
            if timeout is None:
                fcntl.flock(handle, fcntl.LOCK_EX)
                held = True
            else:
                held, deadline = False, time.monotonic() + timeout
                while not held:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        held = True
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            break
                        time.sleep(0.005)
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(handle, fcntl.LOCK_UN)
