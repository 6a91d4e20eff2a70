"""One rollout's next steps, as the driver takes them: start a wave, move its devices to
the target (within windows, the concurrency cap and the offline policy), time out the
silent ones, bake, read the gates, then the next wave, completion or the failure policy.

Each step is one transaction that checks the driver's lease and locks it with the
rollout's row (``Lease.held``), inside the fleet repositories' writer lock
(``GitopsWriter.change``), so a step that moves devices is written as one commit
naming the rollout and the wave, right after it commits. The database is the truth:
a controller killed between two steps resumes from the rows, and a step either
happened whole or not at all, so no device is moved twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, true
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.gitops.fleet import RENDERED
from edgefleet.controller.gitops.writer import Change
from edgefleet.controller.models import (
    Device,
    EngineLease,
    Profile,
    ProfileRevision,
    Rollout,
    RolloutDevice,
    RolloutWave,
    Site,
    aware,
    utcnow,
)
from edgefleet.controller.rollouts import gates, shadow, store
from edgefleet.controller.rollouts import windows as win
from edgefleet.controller.rollouts.lease import Lease
from edgefleet.controller.rollouts.members import OFFLINE_AFTER_INTERVALS
from edgefleet.controller.rollouts.outcome import FAILED_UPDATES, attempt_of, classify
from edgefleet.controller.rollouts.spec import RolloutSpec
from edgefleet.controller.rollouts.states import (
    ENGINE,
    MOVED,
    UNRESOLVED,
    DeviceOutcome,
    RolloutState,
    WaveState,
)
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import drift
from edgefleet.controller.services import shadow as shadow_store

MAX_STEPS = 16
"""Steps taken in a row before the driver looks at its other rollouts."""


class Advancer:
    def __init__(self, rt: Runtime, lease: Lease) -> None:
        self.rt = rt
        self.lease = lease
        self.waiting: dict[int, int] = {}
        """Per rollout, after its last step: how many of its current wave's devices are
        updating when none is left to move (a success short of the last one changes
        nothing a step would act on)."""

    def advance(self, rollout_id: int) -> datetime | None:
        """Take every step the rollout can take now; when it next needs the engine (None:
        only when a device's outcome arrives or an operator acts)."""
        due: datetime | None = None
        self.waiting.pop(rollout_id, None)
        for _ in range(MAX_STEPS):
            progressed, due = self._step(rollout_id)
            if not progressed:
                return due
        return utcnow()

    def _step(self, rollout_id: int) -> tuple[bool, datetime | None]:
        now = utcnow()
        with self.rt.gitops.change(ENGINE) as change:
            change.sites = set()
            with session_scope(self.rt.engine) as s:
                r = s.scalars(  # the rollout and the lease, locked in one round trip
                    select(Rollout)
                    .join(EngineLease, true())
                    .where(Rollout.id == rollout_id, *self.lease.held())
                    .with_for_update()
                ).first()
                if r is None:
                    self.lease.fence(s)  # raises LostLease if that is why
                if r is None or r.state != RolloutState.running:
                    return False, None
                step = _Step(s, r, now, change, self.rt)
                progressed, due = step.run()
                if not progressed and step.quiet is not None:
                    self.waiting[rollout_id] = step.quiet
            if step.moved_desired:
                self.rt.changed()  # before the write: devices need not wait for Git
        if step.wave_commit is not None and change.outcome.commits:
            _keep_commits(self.rt, rollout_id, step.wave_commit, change.outcome.commits)
        if step.finished_wave is not None:
            self.rt.metrics.rollout_wave_seconds.observe(step.finished_wave)
        return progressed, due


@dataclass
class _Tally:
    """What a step needs to know of the devices, in one aggregate read: failures over
    the whole rollout, and the current wave's pending and updating devices (with the
    earliest move, offline or not, for the deadlines)."""

    failed: int = 0
    pending: int = 0
    updating: int = 0
    first_moved: dict[bool, datetime] = field(default_factory=dict)

    @classmethod
    def read(cls, s: Session, rollout_id: int, wave: int) -> _Tally:
        rows = s.execute(
            select(
                RolloutDevice.state,
                RolloutDevice.offline,
                func.min(RolloutDevice.moved_at),
                func.count(),
            )
            .where(
                RolloutDevice.rollout_id == rollout_id,
                (RolloutDevice.state == DeviceOutcome.failed)
                | (
                    (RolloutDevice.wave == wave) & RolloutDevice.state.in_(UNRESOLVED)  # type: ignore[attr-defined]
                ),
            )
            .group_by(RolloutDevice.state, RolloutDevice.offline)
        )
        tally = cls()
        for state, offline, first, n in rows:
            if state == DeviceOutcome.failed:
                tally.failed += n
            elif state == DeviceOutcome.pending:
                tally.pending += n
            else:
                tally.updating += n
                tally.first_moved[bool(offline)] = aware(first)  # type: ignore[assignment]
        return tally


class _Step:
    """One transaction's worth of a rollout's progress."""

    def __init__(self, s: Session, r: Rollout, now: datetime, change: Change, rt: Runtime):
        self.s, self.r, self.now, self.change, self.rt = s, r, now, change, rt
        self.spec = RolloutSpec.model_validate(r.spec)
        self.moved_desired = False
        self.quiet: int | None = None
        """Devices still updating, when the wave waits on them alone."""
        self.wave_commit: int | None = None
        self.finished_wave: float | None = None

    def run(self) -> tuple[bool, datetime | None]:
        r, s = self.r, self.s
        wave = s.scalars(
            select(RolloutWave).where(
                RolloutWave.rollout_id == r.id, RolloutWave.number == r.current_wave
            )
        ).one()
        tally = _Tally.read(s, r.id, wave.number)  # type: ignore[arg-type]
        verdict = gates.too_many_failures(self.spec.gates, tally.failed, r.accepted_failures)
        if verdict is not None:
            wave.gate = verdict.public()
            self._trip(verdict.detail)
            return True, None
        if wave.state == WaveState.pending:
            wave.state, wave.started_at = WaveState.updating, self.now
            store.event(s, r.id, ENGINE, "wave_started", at=self.now, wave=wave.number)  # type: ignore[arg-type]
            self._touch()
            self._start_shadow(wave)
            return True, self.now
        if wave.state == WaveState.shadowing:
            return self._shadowing(wave)
        if wave.state == WaveState.updating:
            return self._updating(wave, tally)
        if wave.state == WaveState.baking:
            return self._baking(wave)
        return False, None

    # -- the shadow phase -----------------------------------------------------------------

    def _candidates(self) -> list[dict[str, Any]]:
        """The target's models that differ from the rollout's starting revision."""
        specs = dict(
            self.s.execute(
                select(ProfileRevision.number, ProfileRevision.spec).where(
                    ProfileRevision.profile_id == self.r.profile_id,
                    ProfileRevision.number.in_(  # type: ignore[attr-defined]
                        [self.r.from_revision, self.r.target_revision]
                    ),
                )
            ).all()
        )
        return shadow.changed_models(
            specs.get(self.r.from_revision, {}).get("models", []),
            specs.get(self.r.target_revision, {}).get("models", []),
        )

    def _start_shadow(self, wave: RolloutWave) -> None:
        """A wave of a rollout with a shadow phase shadows first, when the target changes
        a model (a configuration-only revision has nothing to compare)."""
        if not self.spec.shadow_seconds:
            return
        models = self._candidates()
        if not models:
            return
        wave.state = WaveState.shadowing
        wave.shadow_until = self.now + timedelta(seconds=self.spec.shadow_seconds)
        store.event(
            self.s,
            self.r.id,  # type: ignore[arg-type]
            ENGINE,
            "shadow_started",
            at=self.now,
            wave=wave.number,
            until=wave.shadow_until.isoformat(),
            models=[m["name"] for m in models],
        )
        self.moved_desired = True  # the wave's devices get the shadow plan

    def _shadowing(self, wave: RolloutWave) -> tuple[bool, datetime | None]:
        """At the phase's end, read the shadow gates: pass, and the wave's devices are
        moved as any wave's; fail, and the rollout stops before any is moved."""
        until = aware(wave.shadow_until)
        overridden = (wave.gate or {}).get("overridden_by")
        if not overridden and until is not None and until > self.now:
            return False, until
        self.moved_desired = True  # either way the shadow plan ends now
        if overridden:
            wave.shadow = {**(wave.shadow or {}), "overridden_by": overridden}
            verdict = gates.Verdict(True, f"{overridden} resumed past its failed shadow gate")
            wave.gate = None  # the bake's gates are read afresh
        else:
            verdict, wave.shadow = self._shadow_evidence(wave)
        if not verdict.ok:
            wave.gate = verdict.public()
            self._trip(f"shadow phase of wave {wave.number}: {verdict.detail}")
            return True, None
        wave.state = WaveState.updating
        store.event(
            self.s,
            self.r.id,  # type: ignore[arg-type]
            ENGINE,
            "shadow_passed",
            verdict.detail,
            at=self.now,
            wave=wave.number,
        )
        self._touch()
        return True, self.now

    def _shadow_evidence(self, wave: RolloutWave) -> tuple[gates.Verdict, dict[str, Any]]:
        members = select(RolloutDevice.device_id).where(
            RolloutDevice.rollout_id == self.r.id,
            RolloutDevice.wave == wave.number,
        )
        devices = list(self.s.scalars(members))
        windows = shadow_store.windows_of(self.s, shadow.key_of(self.r.id), members)  # type: ignore[arg-type]
        until = aware(wave.shadow_until) or self.now
        since = int(until.timestamp()) - self.spec.shadow_seconds

        def worst(model: str) -> dict[str, Any] | None:
            return drift.worst_during(self.s, self.rt, devices, model, since)

        verdict, found = shadow.evidence(
            self.spec.gates, self._candidates(), windows, shadow_store.figures, worst
        )
        return verdict, {**found, "wave_devices": len(devices), "read_at": self.now.isoformat()}

    # -- a wave's devices ---------------------------------------------------------------

    def _updating(self, wave: RolloutWave, tally: _Tally) -> tuple[bool, datetime | None]:
        expired, deadline = self._expire(wave, tally)
        if expired:
            return True, self.now  # the failure gate reads them first
        moved, opens, pending = self._move(wave, tally) if tally.pending else (False, None, 0)
        if moved:
            return True, self.now
        if pending or tally.updating:
            if not tally.pending:
                self.quiet = tally.updating
            return False, _earliest((deadline, opens))
        wave.state = WaveState.baking
        wave.bake_until = self.now + timedelta(seconds=self.spec.bake_seconds)
        store.event(
            self.s,
            self.r.id,  # type: ignore[arg-type]
            ENGINE,
            "wave_baking",
            at=self.now,
            wave=wave.number,
            until=wave.bake_until.isoformat(),
        )
        self._touch()
        return True, wave.bake_until

    def _expire(self, wave: RolloutWave, tally: _Tally) -> tuple[bool, datetime | None]:
        """Fail the wave's moved devices that said nothing within their deadline. Returns
        whether any did and when the next deadline falls; reads rows only when one is
        late (the tally has the earliest move), so a step stays cheap however many
        devices are updating."""
        limits = {
            True: (self.spec.offline_deadline_seconds, "offline since it was moved"),
            False: (self.spec.update_timeout_seconds, "online but silent"),
        }
        waiting = (
            RolloutDevice.rollout_id == self.r.id,
            RolloutDevice.state == DeviceOutcome.updating,
            RolloutDevice.wave == wave.number,
        )
        expired, earliest = False, None
        for offline, first in tally.first_moved.items():
            limit, why = limits[offline]
            deadline = first + timedelta(seconds=limit)
            if deadline > self.now:
                earliest = _earliest((earliest, deadline))
                continue
            cutoff = self.now - timedelta(seconds=limit)
            for rd in self.s.scalars(
                select(RolloutDevice).where(
                    *waiting,
                    RolloutDevice.offline == offline,
                    RolloutDevice.moved_at <= cutoff,  # type: ignore[operator,arg-type]
                )
            ):
                self._resolve(rd, DeviceOutcome.failed, f"no outcome within {limit} s ({why})")
                expired = True
        return expired, earliest

    def _move(self, wave: RolloutWave, tally: _Tally) -> tuple[bool, datetime | None, int]:
        """Move the wave's pending devices that may move now. Returns whether anything
        changed, when a closed window opens next and how many devices still wait."""
        r, s, spec = self.r, self.s, self.spec
        rows = s.execute(
            select(RolloutDevice, Device, Site)
            .join(Device, Device.id == RolloutDevice.device_id)
            .join(Site, Site.id == Device.site_id)
            .where(
                RolloutDevice.rollout_id == r.id,
                RolloutDevice.wave == wave.number,
                RolloutDevice.state == DeviceOutcome.pending,
            )
        ).all()  # no ORDER BY: SQLite would walk the primary key to avoid a sort
        rows.sort(key=lambda row: row[0].device_id)
        if not rows:
            return False, None, 0
        room = None
        if spec.concurrency:
            room = spec.concurrency - tally.updating  # earlier waves have none left
        cutoff = self.now - timedelta(seconds=OFFLINE_AFTER_INTERVALS * self._interval())
        hours = _Hours()
        opens: datetime | None = None
        changed, failed, sites, moved, waiting = False, 0, set(), 0, 0
        ready = []
        for rd, device, site in rows:
            if device.state not in RENDERED or device.profile_id != r.profile_id:
                gone = "no longer follows the profile"
                if device.state not in RENDERED:
                    gone = f"{device.state} since the rollout was created"
                self._resolve(rd, DeviceOutcome.skipped, gone)
                changed = True
                continue
            if spec.respect_windows and site.maintenance_windows:
                when = hours.opens(site, self.now)
                if when > self.now:
                    opens = _earliest((opens, when))
                    waiting += 1
                    continue
            seen = aware(device.last_seen_at)
            online = seen is not None and seen >= cutoff
            if not online and spec.offline != "wait":
                outcome = DeviceOutcome.skipped if spec.offline == "skip" else DeviceOutcome.failed
                self._resolve(rd, outcome, f"offline when wave {wave.number} reached it")
                failed += outcome == DeviceOutcome.failed
                changed = True
                continue
            ready.append((rd, device, site, online))
        if gates.too_many_failures(spec.gates, tally.failed + failed, r.accepted_failures):
            ready = []  # the next step trips the gate: move nobody it would move back
        for rd, device, site, online in ready:
            if room is not None and room <= 0:
                waiting += 1
                continue
            self._move_one(rd, device, online)
            sites.add(site.name)
            moved += 1
            if room is not None:
                room -= 1
        if moved:
            self.moved_desired = True
            self.wave_commit = wave.number
            self.change.sites = sites
            self.change.title = (
                f"Rollout {r.id} wave {wave.number}/{r.waves_total} ({wave.step}): "
                f"{self._profile_name()} to revision {r.target_revision}"
            )
            self.change.why = f"rollout {r.id} created by {r.created_by}" + (
                f": {r.reason}" if r.reason else ""
            )
            store.event(
                s,
                r.id,  # type: ignore[arg-type]
                ENGINE,
                "devices_moved",
                at=self.now,
                wave=wave.number,
                devices=moved,
            )
        if moved or changed:
            self._touch()
        return bool(moved or changed), opens, waiting

    def _move_one(self, rd: RolloutDevice, device: Device, online: bool) -> None:
        target = self.r.target_revision
        rd.previous_revision = device.profile_revision
        rd.offline = not online
        rd.moved_at = self.now
        rd.known_attempt = attempt_of(device.status, target)
        last = device.status.get("last_update") or {}
        if rd.known_attempt is not None and last.get("outcome") in FAILED_UPDATES:
            device.update_retries += 1  # it tried the target before and gave up: try again
        device.profile_revision = target
        found = classify(device.status, target, rd.known_attempt)
        if found is not None and found[0] == DeviceOutcome.succeeded:
            self._resolve(rd, DeviceOutcome.succeeded, "already ran the target")
        else:
            rd.state = DeviceOutcome.updating

    def _resolve(self, rd: RolloutDevice, outcome: DeviceOutcome, reason: str) -> None:
        rd.state, rd.reason, rd.resolved_at = outcome, reason[:1024], self.now
        if outcome == DeviceOutcome.failed:
            store.event(
                self.s,
                rd.rollout_id,
                ENGINE,
                "device_failed",
                reason,
                at=self.now,
                device=rd.device_id,
                wave=rd.wave,
            )

    # -- bake, gates and the end --------------------------------------------------------

    def _baking(self, wave: RolloutWave) -> tuple[bool, datetime | None]:
        until = aware(wave.bake_until)
        if until is not None and until > self.now:
            return False, until
        by_state = store.counts(self.s, self.r.id).get(wave.number, {})  # type: ignore[arg-type]
        overridden = (wave.gate or {}).get("overridden_by")
        if overridden:
            verdict = gates.Verdict(True, f"{overridden} resumed past its failed gate")
        else:
            verdict = gates.wave_verdict(
                self.spec.gates,
                by_state.get(DeviceOutcome.succeeded, 0),
                by_state.get(DeviceOutcome.failed, 0),
                self._inference(),
            )
        wave.gate = verdict.public()
        if not verdict.ok:
            self._trip(verdict.detail)
            return True, None
        wave.state, wave.finished_at = WaveState.passed, self.now
        started = aware(wave.started_at)
        if started is not None:
            self.finished_wave = (self.now - started).total_seconds()
        store.event(
            self.s,
            self.r.id,  # type: ignore[arg-type]
            ENGINE,
            "wave_passed",
            verdict.detail,
            at=self.now,
            wave=wave.number,
        )
        if self.r.current_wave < self.r.waves_total:
            self.r.current_wave += 1
            self._touch()
            return True, self.now
        self._complete()
        return True, None

    def _inference(self) -> list[dict[str, Any]]:
        """The inference stats of every device that runs the target so far."""
        rows = self.s.execute(
            select(Device.status)
            .join(RolloutDevice, RolloutDevice.device_id == Device.id)
            .where(
                RolloutDevice.rollout_id == self.r.id,
                RolloutDevice.state == DeviceOutcome.succeeded,
            )
        )
        return [status.get("inference") or {} for (status,) in rows]

    def _complete(self) -> None:
        """Release the target to the profile's followers, and let the devices the rollout
        pinned follow it again; the skipped and the newly enrolled get it now."""
        r, s = self.r, self.s
        profile = s.get(Profile, r.profile_id, with_for_update=True)
        assert profile is not None
        profile.released_revision = r.target_revision
        pinned = s.execute(
            select(Device)
            .join(RolloutDevice, RolloutDevice.device_id == Device.id)
            .where(
                RolloutDevice.rollout_id == r.id,
                RolloutDevice.previous_revision.is_(None),  # type: ignore[union-attr]
                RolloutDevice.moved_at.is_not(None),  # type: ignore[union-attr]
                Device.profile_id == r.profile_id,
                Device.profile_revision == r.target_revision,
            )
        ).scalars()
        for device in pinned:
            device.profile_revision = None
        s.flush()
        self.change.sites = set(_follower_sites(s, r.profile_id))
        self.change.title = (
            f"Rollout {r.id} complete: {profile.name} released at revision {r.target_revision}"
        )
        self.change.why = f"rollout {r.id} passed its {r.waves_total} wave(s)"
        self.moved_desired = True
        r.state, r.reason, r.finished_at = RolloutState.completed, "every wave passed", self.now
        store.event(s, r.id, ENGINE, "completed", at=self.now)  # type: ignore[arg-type]
        self._touch()

    def _trip(self, detail: str) -> None:
        r = self.r
        store.event(self.s, r.id, ENGINE, "gate_failed", detail, at=self.now, wave=r.current_wave)  # type: ignore[arg-type]
        if self.spec.on_failure == "pause":
            r.state, r.reason = RolloutState.paused, f"gate failed: {detail}"
            store.event(self.s, r.id, ENGINE, "paused", r.reason, at=self.now)  # type: ignore[arg-type]
            self._touch()
            return
        revert(self.s, r, self.change, ENGINE, f"gate failed: {detail}", self.now)
        self.moved_desired = True

    def _interval(self) -> int:
        spec = self.s.scalar(
            select(ProfileRevision.spec).where(
                ProfileRevision.profile_id == self.r.profile_id,
                ProfileRevision.number == self.r.from_revision,
            )
        )
        policies = (spec or {}).get("policies", {})
        return int(policies.get("interval_seconds", self.rt.settings.device_interval_seconds))

    def _profile_name(self) -> str:
        return self.s.scalar(select(Profile.name).where(Profile.id == self.r.profile_id)) or "?"

    def _touch(self) -> None:
        self.r.updated_at = self.now


def revert(
    s: Session, r: Rollout, change: Change, actor: str, reason: str, now: datetime
) -> list[str]:
    """Put back every device the rollout moved (unless someone moved it since) and the
    profile's released revision; the write is one commit saying what it reverts.
    Returns the devices moved back."""
    profile = s.get(Profile, r.profile_id, with_for_update=True)
    assert profile is not None
    rows = s.execute(
        select(RolloutDevice, Device, Site.name)
        .join(Device, Device.id == RolloutDevice.device_id)
        .join(Site, Site.id == Device.site_id)
        .where(
            RolloutDevice.rollout_id == r.id,
            RolloutDevice.state.in_(MOVED),  # type: ignore[attr-defined]
            RolloutDevice.moved_at.is_not(None),  # type: ignore[union-attr]
        )
    ).all()
    sites: set[str] = set()
    back = []
    for rd, device, site in rows:
        if device.profile_id == r.profile_id and device.profile_revision == r.target_revision:
            device.profile_revision = rd.previous_revision
            sites.add(site)
            back.append(device.id)
        if rd.state != DeviceOutcome.failed:  # a failure stays one, with its reason
            rd.state, rd.resolved_at = DeviceOutcome.reverted, now
            rd.reason = f"rolled back: {reason}"[:1024]
    if profile.released_revision == r.target_revision:
        profile.released_revision = r.from_revision
        s.flush()
        sites.update(_follower_sites(s, r.profile_id))
    waves = s.scalars(
        select(RolloutWave)
        .where(RolloutWave.rollout_id == r.id, RolloutWave.state != WaveState.pending)
        .order_by(RolloutWave.number)  # type: ignore[arg-type]
    ).all()
    for wave in waves:
        if wave.state in (WaveState.shadowing, WaveState.updating, WaveState.baking):
            wave.state, wave.finished_at = WaveState.failed, now
    numbers = [w.number for w in waves] or [r.current_wave]
    span = str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"
    reverted = [
        f"{repo}@{sha[:12]} (wave {w.number})"
        for w in waves
        for repo, sha in sorted(w.commits.items())
        if sha
    ]
    change.sites = sites
    change.title = (
        f"Revert rollout {r.id} (wave{'s' if len(numbers) > 1 else ''} {span}): "
        f"{profile.name} back to revision {r.from_revision}"
    )
    change.why = f"{actor}: {reason}" + (f"; reverts {', '.join(reverted)}" if reverted else "")
    r.state, r.reason, r.finished_at, r.updated_at = RolloutState.rolled_back, reason, now, now
    store.event(s, r.id, actor, "rolled_back", reason, at=now, devices=len(back))  # type: ignore[arg-type]
    return back


def _follower_sites(s: Session, profile_id: int) -> Iterable[str]:
    return s.scalars(
        select(Site.name)
        .distinct()
        .join(Device, Device.site_id == Site.id)
        .where(
            Device.profile_id == profile_id,
            Device.profile_revision.is_(None),  # type: ignore[union-attr]
            Device.state.in_([st.value for st in RENDERED]),  # type: ignore[attr-defined]
        )
    ).all()


def _earliest(times: Iterable[datetime | None]) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


def _keep_commits(rt: Runtime, rollout_id: int, number: int, commits: dict[str, Any]) -> None:
    """Remember which commits moved a wave, for the rollback's message and the console."""
    with session_scope(rt.engine) as s:
        wave = s.scalars(
            select(RolloutWave)
            .where(RolloutWave.rollout_id == rollout_id, RolloutWave.number == number)
            .with_for_update()
        ).one()
        wave.commits = {**wave.commits, **{k: v for k, v in commits.items() if v}}


class _Hours:
    """Sites' windows parsed once per step."""

    def __init__(self) -> None:
        self._parsed: dict[int, tuple[list[win.Window], Any]] = {}

    def opens(self, site: Site, now: datetime) -> datetime:
        key = site.id or 0
        if key not in self._parsed:
            self._parsed[key] = (
                [win.parse_window(t) for t in site.maintenance_windows],
                win.zone(site.timezone),
            )
        windows, tz = self._parsed[key]
        return win.next_open(windows, tz, now)
