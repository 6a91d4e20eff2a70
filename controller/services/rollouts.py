"""Rollouts: the dry run. ``plan`` shows which devices each wave would update,
how many are offline, which of its sites are outside their maintenance windows, and how
long the whole rollout may take; it changes nothing, so readers may ask.

The waves are ranked by the spec's ``seed`` (a random one when the spec has none, echoed
back in ``spec``): handing that spec to ``create`` gives the same waves for the same
selection. A selection of no device is refused (400 ``no_devices``) rather than
answered with an empty plan, because a rollout of nothing is a mistake in the selector
and ``create`` will refuse it the same way.

The duration is an estimate, not a promise. Per wave, in order, starting now:

    shadow_seconds (when the target changes a model the devices run)
    + wait for the last of its sites' windows to open (when ``respect_windows``)
    + ceil(devices to update / concurrency) x UPDATE_SECONDS_ESTIMATE
    + bake_seconds

where the devices to update leave out offline ones when the policy is ``skip``, and no
concurrency means a whole wave at once (one batch). A wave with nothing to update takes
no time. Waiting for offline devices (policy ``wait``) is not in it: ``offline_wait_seconds``
is the most that could add (the deadline, once per wave with offline devices).
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlmodel import Session

from edgefleet.controller.db import reading
from edgefleet.controller.gitops.fleet import RENDERED
from edgefleet.controller.models import Device, Profile, Site
from edgefleet.controller.roles import Operator
from edgefleet.controller.rollouts import windows as win
from edgefleet.controller.rollouts.members import select_members
from edgefleet.controller.rollouts.plan import Member, Wave, assign
from edgefleet.controller.rollouts.shadow import changed_models
from edgefleet.controller.rollouts.spec import RolloutSpec
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import profiles
from edgefleet.errors import BadRequest, NotFound

UPDATE_SECONDS_ESTIMATE = 300
"""One batch of devices pulling models, switching slots and passing health checks: a
guess for the plan's duration, not a timeout."""


@dataclass(frozen=True)
class _Hours:
    """A site's maintenance windows, parsed once per plan."""

    windows: tuple[win.Window, ...]
    tz: ZoneInfo

    def open_at(self, when: datetime) -> bool:
        return win.is_open(list(self.windows), self.tz, when)

    def opens(self, when: datetime) -> datetime:
        return win.next_open(list(self.windows), self.tz, when)


class _Clock:
    """When each site may be updated; sites that share windows and zone share the work
    (``next_open`` steps minute by minute)."""

    def __init__(self, sites: dict[str, tuple[str, list[str]]]) -> None:
        self._hours: dict[str, _Hours] = {}
        parsed: dict[tuple[str, tuple[str, ...]], _Hours] = {}
        for name, (tz, texts) in sites.items():
            if not texts:
                continue
            key = (tz, tuple(texts))
            if key not in parsed:
                parsed[key] = _Hours(tuple(win.parse_window(t) for t in texts), win.zone(tz))
            self._hours[name] = parsed[key]
        self._opens: dict[tuple[int, datetime], datetime] = {}

    def opens(self, site: str, when: datetime) -> datetime:
        hours = self._hours.get(site)
        if hours is None or hours.open_at(when):
            return when
        key = (id(hours), when)
        if key not in self._opens:
            self._opens[key] = hours.opens(when)
        return self._opens[key]


@dataclass(frozen=True)
class Selection:
    """What a spec selects now: the plan shows it, ``create`` fixes it."""

    profile: Profile
    target: int
    seed: str
    members: list[Member]
    waves: list[Wave]
    sites: dict[str, tuple[str, list[str]]]
    """Every site's time zone and maintenance windows."""
    candidates: list[dict[str, Any]]
    """The target's models that change, which a shadow phase would compare."""

    @property
    def spec(self) -> dict[str, Any]:
        """The spec with its seed and revision filled in: creating it makes these waves."""
        return {"seed": self.seed, "revision": self.target}


def selection(rt: Runtime, spec: RolloutSpec, now: datetime) -> Selection:
    """The devices ``spec`` selects at ``now``, cut into its waves by its seed (a random
    one if it has none). Unknown profile, revision or site: NotFound; no device:
    BadRequest ``no_devices``."""
    steps = spec.steps()
    seed = spec.seed or secrets.token_hex(8)
    with Session(rt.engine) as s:
        profile = profiles.profile_by_name(s, spec.profile)
        target = spec.revision or profile.latest_revision
        target_spec = profiles.revision_or_404(s, profile, target).spec
        latest = profiles.revision_or_404(s, profile, profile.latest_revision)
        from_spec = profiles.revision_or_404(s, profile, profile.followed_revision).spec
        known = {
            name: (tz, list(texts or []))
            for name, tz, texts in s.execute(
                select(Site.name, Site.timezone, Site.maintenance_windows)
            )
        }
    if spec.shadow_seconds and target_spec.get("mode") == "k3s":
        raise BadRequest(
            f"profile {profile.name!r} revision {target} is mode: k3s, whose devices read "
            "their desired state from the fleet repository, which carries no shadow plan: "
            "set shadow_seconds to 0 (the health gates still apply)",
            code="shadow_unsupported",
        )
    missing = sorted(set(spec.sites) - set(known))
    if missing:
        raise NotFound(
            f"no site {', '.join(repr(m) for m in missing)}; `edgefleet sites list` shows them",
            code="no_site",
        )
    interval = latest.spec.get("policies", {}).get(
        "interval_seconds", rt.settings.device_interval_seconds
    )
    members = select_members(
        rt.engine,
        profile.name,
        labels=spec.labels,
        sites=spec.sites or None,
        now=now,
        interval_seconds=int(interval),
    )
    if not members:
        raise BadRequest(_nobody(spec), code="no_devices")
    candidates = changed_models(from_spec.get("models", []), target_spec.get("models", []))
    return Selection(
        profile, target, seed, members, assign(members, steps, seed), known, candidates
    )


def plan(rt: Runtime, who: Operator, spec: RolloutSpec, now: datetime) -> dict[str, Any]:
    """The dry run of ``spec`` at ``now`` (an aware time); see the module's docstring.

    ``following`` counts the revisions the selected devices follow now (a pin, else the
    profile's released revision) and ``from_revision`` is the most common of them;
    ``already_applied`` counts those that report running the target revision already."""
    chosen = selection(rt, spec, now)
    profile, target, members, waves = chosen.profile, chosen.target, chosen.members, chosen.waves
    clock = _Clock(chosen.sites) if spec.respect_windows else _Clock({})
    current = _current(rt, profile, members)
    following = Counter(rev for rev, _applied in current.values())
    shadow_seconds = spec.shadow_seconds if chosen.candidates else 0
    rows, total = _waves(spec, waves, clock, now, shadow_seconds)
    offline = sum(w.offline for w in waves)
    waiting = sum(w.offline > 0 for w in waves) if spec.offline == "wait" else 0
    return {
        "profile": profile.name,
        "revision": target,
        "latest_revision": profile.latest_revision,
        "from_revision": following.most_common(1)[0][0] if following else None,
        "following": {str(rev): n for rev, n in sorted(following.items())},
        "already_applied": sum(applied == target for _rev, applied in current.values()),
        "devices": len(members),
        "offline": offline,
        "sites": len({m.site for m in members}),
        "waves": rows,
        "expected_seconds": total,
        "offline_wait_seconds": waiting * spec.offline_deadline_seconds,
        "update_seconds_estimate": UPDATE_SECONDS_ESTIMATE,
        "seed": chosen.seed,
        "now": now.isoformat(),
        "shadow": _shadow(spec, chosen.candidates),
        "warnings": _warnings(spec, target, profile, waves, members, current)
        + _shadow_warnings(spec, chosen.candidates),
        "spec": spec.model_copy(update=chosen.spec).model_dump(mode="json"),
    }


def _waves(
    spec: RolloutSpec, waves: list[Wave], clock: _Clock, now: datetime, shadow_seconds: int
) -> tuple[list[dict[str, Any]], int]:
    """Each wave's row, and the estimated seconds of the whole rollout."""
    rows = []
    at = now
    for number, wave in enumerate(waves, start=1):
        sites = sorted(wave.sites)
        closed = [site for site in sites if clock.opens(site, now) > now]
        opens_at = max((clock.opens(site, now) for site in closed), default=None)
        seconds = _wave_seconds(spec, wave, clock, at)
        seconds += shadow_seconds if wave.members else 0
        at += timedelta(seconds=seconds)
        rows.append(
            {
                "wave": number,
                "step": str(wave.step),
                "devices": len(wave.members),
                "offline": wave.offline,
                "sites": sites,
                "sites_closed_now": closed,
                "opens_at": opens_at.isoformat() if opens_at else None,
                "shadow_seconds": shadow_seconds if wave.members else 0,
                "expected_seconds": seconds,
            }
        )
    return rows, int((at - now).total_seconds())


def _wave_seconds(spec: RolloutSpec, wave: Wave, clock: _Clock, start: datetime) -> int:
    updating = len(wave.members) - (wave.offline if spec.offline == "skip" else 0)
    if updating <= 0:
        return 0
    ready = max(clock.opens(site, start) for site in wave.sites)
    wait = math.ceil((ready - start).total_seconds())
    batches = math.ceil(updating / spec.concurrency) if spec.concurrency else 1
    return wait + batches * UPDATE_SECONDS_ESTIMATE + spec.bake_seconds


def _shadow(spec: RolloutSpec, candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The shadow phase each wave starts with, or None when there is none."""
    if not spec.shadow_seconds or not candidates:
        return None
    return {
        "seconds": spec.shadow_seconds,
        "sample_rate": spec.shadow_sample_rate,
        "window_seconds": spec.shadow_window_seconds,
        "models": [{"name": m["name"], "candidate": m["reference"]} for m in candidates],
        "gates": {
            name: getattr(spec.gates, name)
            for name in ("min_agreement", "max_mad", "max_drift", "min_shadow_samples")
        },
    }


def _shadow_warnings(spec: RolloutSpec, candidates: list[dict[str, Any]]) -> list[str]:
    if not spec.shadow_seconds:
        return []
    if not candidates:
        return [
            "the target changes no model the devices run now: there is nothing to compare, "
            "so the waves have no shadow phase"
        ]
    if not spec.gates.shadow_gates():
        return [
            "a shadow phase without min_agreement, max_mad or max_drift only checks that "
            f"{spec.gates.min_shadow_samples} inferences were compared"
        ]
    return []


def _current(
    rt: Runtime, profile: Profile, members: list[Member]
) -> dict[str, tuple[int, int | None]]:
    """Per selected device: the revision it follows now (its pin, else the profile's
    released revision) and the one it last reported applied."""
    query = select(Device.id, Device.profile_revision, Device.applied_revision).where(
        Device.profile_id == profile.id,
        Device.state.in_([s.value for s in RENDERED]),  # type: ignore[attr-defined]
    )
    wanted = {m.device_id for m in members}
    with reading(rt.engine) as conn:
        return {
            device_id: (pinned or profile.followed_revision, applied)
            for device_id, pinned, applied in conn.execute(query)
            if device_id in wanted
        }


def _nobody(spec: RolloutSpec) -> str:
    where = ""
    if spec.labels:
        where += " with labels " + ",".join(f"{k}={v}" for k, v in spec.labels.items())
    if spec.sites:
        where += " at sites " + ", ".join(spec.sites)
    return (
        f"no enrolled device follows profile {spec.profile!r}{where}, so there is nothing to "
        "roll out; `edgefleet devices list` shows the devices, their sites and labels"
    )


def _warnings(
    spec: RolloutSpec,
    target: int,
    profile: Profile,
    waves: list[Wave],
    members: list[Member],
    current: dict[str, tuple[int, int | None]],
) -> list[str]:
    """What an operator should know before starting this rollout."""
    out = []
    if target < profile.latest_revision:
        out.append(
            f"revision {target} is older than the profile's latest ({profile.latest_revision})"
        )
    if all(applied == target for _rev, applied in current.values()):
        out.append(f"every selected device already runs revision {target}")
    for number, wave in enumerate(waves, start=1):
        if not wave.members:
            out.append(
                f"wave {number} ({wave.step}) has no devices: {len(members)} selected "
                "are too few for it"
                if wave.step.label is None
                else f"wave {number} ({wave.step}) has no devices: none has that label"
            )
        elif wave.offline and spec.offline == "fail":
            out.append(
                f"wave {number} has {wave.offline} offline device(s): with offline=fail "
                "the rollout fails there unless they come back first"
            )
    return out
