"""One small class per state of the update (the table in ``transitions.py`` links them).

A state does one step and reports an Event. An ``EdgefleetError`` or ``OSError`` it
raises is a ``failed`` event with the error as the attempt's reason (the driver does
that), so a state says only what it does when all goes well.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Protocol

from edgefleet.agent.health.checks import Candidate, Target
from edgefleet.agent.health.result import CheckResult
from edgefleet.agent.health.suite import run_checks
from edgefleet.agent.runner.errors import RunnerError
from edgefleet.agent.slots.manifest import manifest_digest
from edgefleet.agent.slots.record import SlotInfo
from edgefleet.agent.update import evidence
from edgefleet.agent.update.attempt import Outcome
from edgefleet.agent.update.context import Context
from edgefleet.agent.update.events import Event
from edgefleet.agent.update.modelset import load_set, stage
from edgefleet.agent.update.transitions import State
from edgefleet.errors import EdgefleetError
from edgefleet.oci.errors import RegistryUnreachable

log = logging.getLogger("edgefleet.agent")

MAX_REASON = 2000


class UpdateError(EdgefleetError):
    default_code = "update"


class Step(Protocol):
    def run(self, ctx: Context) -> Event: ...


class RegistryOutage(Exception):
    """Staging met a registry that does not answer (or answers 5xx): not the revision's
    fault, so the attempt ends without an outcome and waits for the registry instead of
    failing (a rollout would count that failure against a good revision). Deliberately
    not an EdgefleetError, which the machine turns into ``failed``."""


class Staging:
    """Pull every model (resumable, each blob verified) and lay the set out to write."""

    def run(self, ctx: Context) -> Event:
        a = ctx.attempt
        try:
            models = ctx.stager(a.request)
        except RegistryUnreachable as exc:
            raise RegistryOutage(exc.message) from exc
        a.manifest = stage(models, a.revision, ctx.staging)
        log.info("staged revision %s: %d file(s) for slot %s", a.revision, len(a.manifest), a.slot)
        return Event.done


class Writing:
    """Mark the slot empty in the record, then write it: a write cut short leaves a slot
    the record does not trust."""

    def run(self, ctx: Context) -> Event:
        a = ctx.attempt
        record = ctx.boot.load()
        if a.slot == record.active:
            raise UpdateError(f"slot {a.slot} is active; an update never writes the active slot")
        kept = record.slots[a.slot].bad_revisions
        record.slots[a.slot] = SlotInfo(state="empty", bad_revisions=kept)
        ctx.boot.save(record)
        ctx.slots.write(a.slot, ctx.staging, a.manifest)
        return Event.done


class Verifying:
    """Read the slot back from the medium and compare every digest (SlotCorrupt if not)."""

    def run(self, ctx: Context) -> Event:
        ctx.slots.verify(ctx.attempt.slot, ctx.attempt.manifest)
        return Event.done


class Arming:
    """Mark the slot ``trying`` with the policy's attempts."""

    def run(self, ctx: Context) -> Event:
        a = ctx.attempt
        record = ctx.boot.load()
        info = record.slots[a.slot]
        record.slots[a.slot] = replace(
            info,
            state="trying",
            revision=a.revision,
            manifest_digest=manifest_digest(a.manifest),
            reason="",
        )
        record.trying = a.slot
        record.attempts_left = ctx.policy.max_attempts
        ctx.boot.save(record)
        return Event.done


class Trying:
    """Spend one attempt (saved before anything else), then switch: start the slot's
    runners on the candidate sockets beside the ones serving."""

    def run(self, ctx: Context) -> Event:
        a = ctx.attempt
        record = ctx.boot.load()
        if record.trying != a.slot:
            raise UpdateError(
                f"the record no longer tries slot {a.slot} (it tries {record.trying})"
            )
        if record.attempts_left <= 0:
            a.reason = (
                f"no attempts left on slot {a.slot}: the agent died during each of its "
                f"{ctx.policy.max_attempts} tries of revision {a.revision}"
            )
            return Event.exhausted
        record.attempts_left -= 1
        ctx.boot.save(record)
        log.info(
            "trying revision %s in slot %s (%d attempt(s) left after this one)",
            a.revision,
            a.slot,
            record.attempts_left,
        )
        folder = ctx.slots.open(a.slot)
        started = time.monotonic()
        try:
            runners = ctx.serving.start_candidates(folder, a.slot)
        except RunnerError as exc:
            result = CheckResult("model_load", False, exc.message, time.monotonic() - started)
            a.checks = [result.to_json()]
            a.reason = f"health check model_load failed: {exc.message}"
            return Event.failed
        models = load_set(folder)
        ctx.candidates = [
            Candidate(m.name, m.digest, runners[m.name], models.probe(folder, m))
            for m in models.models
        ]
        return Event.done


class Checking:
    """Every check of the policy against the candidate, within the deadline."""

    def run(self, ctx: Context) -> Event:
        a, policy = ctx.attempt, ctx.policy
        env = {
            "EDGEFLEET_REVISION": str(a.revision),
            "EDGEFLEET_SLOT": a.slot,
            "EDGEFLEET_CANDIDATE_SOCKETS": " ".join(
                f"{c.name}={c.runner.config.socket}" for c in ctx.candidates
            ),
            "EDGEFLEET_CANDIDATE_PIDS": " ".join(str(c.runner.pid) for c in ctx.candidates),
        }
        deadline = time.monotonic() + policy.deadline_seconds
        results = run_checks(policy, Target(ctx.candidates, env), deadline)
        a.checks = [r.to_json() for r in results]
        failed = [r for r in results if not r.ok]
        if failed:
            a.reason = "health check(s) failed: " + "; ".join(
                f"{r.name}: {r.detail}" for r in failed
            )
            return Event.failed
        return Event.done


class Committing:
    """The new set takes over the main sockets, then the record makes its slot active."""

    def run(self, ctx: Context) -> Event:
        a = ctx.attempt
        ctx.serving.stop_candidates()
        ctx.candidates = []
        gap = ctx.serving.serve(ctx.slots.open(a.slot), a.slot)
        a.commit_gap_ms = round(gap * 1000, 3)
        record = ctx.boot.load()
        record.slots[a.slot] = replace(record.slots[a.slot], state="good", reason="")
        record.active, record.trying, record.attempts_left = a.slot, None, 0
        ctx.boot.save(record)
        a.outcome = "committed"
        return Event.done


class RollingBack:
    """Mark the slot bad for the revision and serve the previous good slot; its runners
    never stopped unless a commit had already replaced them."""

    def run(self, ctx: Context) -> Event:
        a = ctx.attempt
        record = ctx.boot.load()
        info = record.slots[a.slot]
        bad = list(info.bad_revisions)
        if not a.first_install and a.revision not in bad:
            bad.append(a.revision)  # a first install is retried with backoff instead
        record.slots[a.slot] = replace(
            info, state="bad", revision=a.revision, reason=a.reason[:MAX_REASON], bad_revisions=bad
        )
        if record.trying == a.slot:
            record.trying, record.attempts_left = None, 0
        if record.active == a.slot:  # the commit had landed when the agent started looping
            previous = a.from_slot
            good = previous is not None and record.slots[previous].state == "good"
            record.active = previous if good else None
        record.last_failure = {
            "revision": a.revision,
            "slot": a.slot,
            "reason": a.reason[:MAX_REASON],
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        ctx.boot.save(record)
        ctx.serving.stop_candidates()  # after the record: stopping a runner takes ~0.5 s
        ctx.candidates = []
        ctx.serve_active(record)
        a.outcome = "rolled_back"
        return Event.done


class Failing:
    """Nothing was tried (or the rollback itself failed): empty the slot unless it is
    active, so no half-written set remains, and keep the active slot serving."""

    def run(self, ctx: Context) -> Event:
        a = ctx.attempt
        ctx.serving.stop_candidates()
        ctx.candidates = []
        a.outcome = "failed"
        record = ctx.boot.load()
        if a.slot != record.active:
            kept = record.slots[a.slot].bad_revisions
            record.slots[a.slot] = SlotInfo(state="empty", bad_revisions=kept)
            if record.trying == a.slot:
                record.trying, record.attempts_left = None, 0
            ctx.boot.save(record)
            ctx.slots.clear(a.slot)
        ctx.serve_active(record)
        return Event.done


class Reporting:
    """Keep the evidence bundle and the outcome; drop what staging left."""

    def run(self, ctx: Context) -> Event:
        a = ctx.attempt
        path = evidence.bundle_path(ctx.evidence, a.revision, a.started_at)
        outcome = Outcome(
            revision=a.revision,
            outcome=a.outcome or "failed",
            slot=a.slot,
            reason=a.reason,
            evidence=str(path),
            started_at=a.started_at,
            finished_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            commit_gap_ms=a.commit_gap_ms,
        )
        level = logging.INFO if outcome.outcome == "committed" else logging.WARNING
        log.log(
            level,
            "update to revision %s %s in slot %s%s",
            a.revision,
            outcome.outcome.replace("_", " "),
            a.slot,
            f": {a.reason}" if a.reason else "",
        )
        bundle = {
            **asdict(outcome),
            "checks": a.checks,
            "failed_checks": [c for c in a.checks if not c["ok"]],
            "record": ctx.boot.load().to_dict(),
            "log": evidence.log_lines(ctx.log_file),
        }
        evidence.write_bundle(path, bundle)
        ctx.store.save_outcome(outcome)
        shutil.rmtree(ctx.staging, ignore_errors=True)
        return Event.done


STATES: dict[State, Step] = {
    State.staging: Staging(),
    State.writing: Writing(),
    State.verifying: Verifying(),
    State.arming: Arming(),
    State.trying: Trying(),
    State.checking: Checking(),
    State.committing: Committing(),
    State.rolling_back: RollingBack(),
    State.failing: Failing(),
    State.reporting: Reporting(),
}
