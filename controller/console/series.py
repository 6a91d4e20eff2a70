"""The numbers behind the console's charts, over fixed time buckets: results stored,
status history (fleet, site, device), fleet health now, rollout progress. Core
statements on indexes (see each function), plain dataclasses out; ``charts.py`` draws
them.

Times: every bucket is an aware UTC instant. Buckets are aligned on whole multiples of
their width since the Unix epoch, so 30-minute buckets start at :00 and :30 and daily
buckets at UTC midnight, whichever zone the chart is shown in (a chart only labels them
in a zone). The last bucket is the one holding ``now``, so it is still filling.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, case, cast, func, literal_column, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from edgefleet.controller.db import reading
from edgefleet.controller.gitops.fleet import RENDERED
from edgefleet.controller.models import (
    Device,
    DeviceSample,
    Profile,
    ProfileRevision,
    Result,
    SampleRollup,
    Site,
    aware,
)
from edgefleet.controller.rollouts.members import OFFLINE_AFTER_INTERVALS
from edgefleet.controller.sample_rollup import (
    FLEET,
    PeriodNumbers,
    period_numbers,
    rolled_until,
)
from edgefleet.controller.services.rollout_views import detail
from edgefleet.errors import BadRequest
from edgefleet.percentile import percentile
from edgefleet.wire import DeviceState

MAX_BUCKETS = 500

S = DeviceSample.__table__  # type: ignore[attr-defined]
R = SampleRollup.__table__  # type: ignore[attr-defined]
RES = Result.__table__  # type: ignore[attr-defined]
D = Device.__table__  # type: ignore[attr-defined]


# -- buckets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Buckets:
    """``count`` buckets of ``step`` from ``start`` (aware, UTC)."""

    start: datetime
    step: timedelta
    count: int

    @classmethod
    def ending(cls, count: int, step: timedelta, now: datetime | None = None) -> Buckets:
        """``count`` buckets of ``step``, aligned on the epoch, the last holding ``now``."""
        seconds = step.total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise BadRequest(f"a bucket must last whole seconds, at least 1 (not {step})")
        if not 1 <= count <= MAX_BUCKETS:
            raise BadRequest(f"ask for 1 to {MAX_BUCKETS} buckets (not {count})")
        now = (now or datetime.now(UTC)).astimezone(UTC)
        index = int(now.timestamp() // seconds)
        start = datetime.fromtimestamp((index - count + 1) * seconds, UTC)
        return cls(start, step, count)

    @property
    def end(self) -> datetime:
        return self.start + self.count * self.step

    def starts(self) -> list[datetime]:
        return [self.start + i * self.step for i in range(self.count)]

    def index(self, t: datetime) -> int | None:
        """The bucket holding ``t``, None outside."""
        i = int(((aware(t) or t) - self.start).total_seconds() // self.step.total_seconds())
        return i if 0 <= i < self.count else None


def last_hour(now: datetime | None = None) -> Buckets:
    """60 buckets of a minute."""
    return Buckets.ending(60, timedelta(minutes=1), now)


def last_day(now: datetime | None = None) -> Buckets:
    """48 buckets of 30 minutes."""
    return Buckets.ending(48, timedelta(minutes=30), now)


def last_week(now: datetime | None = None) -> Buckets:
    """56 buckets of 3 hours."""
    return Buckets.ending(56, timedelta(hours=3), now)


def _bucket_of(conn: Connection, column: Any, buckets: Buckets) -> Any:
    """The bucket index of a time column, in SQL. Integer constants, not parameters: the
    GROUP BY must repeat the very expression of the SELECT (PostgreSQL compares them as
    text), and SQLite's integer division floors without the math extension."""
    start = literal_column(str(int(buckets.start.timestamp())), Integer)
    step = literal_column(str(int(buckets.step.total_seconds())), Integer)
    if conn.dialect.name == "postgresql":
        seconds = cast(func.floor(func.extract("epoch", column)), Integer)
    else:
        seconds = cast(func.strftime(literal_column("'%s'"), column), Integer)
    return (seconds - start) // step


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResultBucket:
    start: datetime
    end: datetime
    results: int
    """Results whose time (the device's, corrected by the controller) falls in the bucket."""


def results_per_bucket(
    engine: Engine, buckets: Buckets, *, site_id: int | None = None, device_id: str | None = None
) -> list[ResultBucket]:
    """Results stored per bucket, of the fleet, a site or a device. One grouped count
    over an index range: ``ix_result_time`` (fleet), ``ix_result_device_time`` (a device;
    a site: each of its devices through ``ix_device_site_id``), both covering."""
    with reading(engine) as conn:
        t = RES.c.time
        which = _bucket_of(conn, t, buckets).label("b")
        q = select(which, func.count()).where(t >= buckets.start, t < buckets.end)
        if device_id is not None:
            q = q.where(RES.c.device_id == device_id)
        if site_id is not None:
            q = q.join(D, D.c.id == RES.c.device_id).where(D.c.site_id == site_id)
        counts = {int(b): n for b, n in conn.execute(q.group_by(which))}
    return [
        ResultBucket(s, s + buckets.step, counts.get(i, 0)) for i, s in enumerate(buckets.starts())
    ]


# -- status history --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusBucket:
    """A fleet's or a site's status in one bucket. Counts are the highest of the bucket's
    sample periods (a half-hour bucket says how many devices at most were unhealthy at
    once); the median p95 is the median of the periods' medians, the max the highest p95
    any device reported. A device reporting less often than once per sample period counts
    in the periods it reported in."""

    start: datetime
    end: datetime
    reporting: int
    healthy: int
    unhealthy: int
    p95_median_ms: float | None
    p95_max_ms: float | None


@dataclass(frozen=True, slots=True)
class DeviceBucket:
    """One device in one bucket: its worst (p95, error rate, buffer depth) and latest
    (state, revision, drops) sampled values; None where it sent nothing."""

    start: datetime
    end: datetime
    samples: int
    healthy: bool | None
    """False if any sample of the bucket was unhealthy."""
    state: str | None
    applied_revision: int | None
    p95_ms: float | None
    error_rate: float | None
    buffer_depth: int | None
    buffer_drops: int | None
    """The buffer's drop counters summed over reasons, as last reported in the bucket."""


def status_per_bucket(
    engine: Engine, buckets: Buckets, *, site_id: int | None = None
) -> list[StatusBucket]:
    """The fleet's (or a site's) status per bucket. Periods already rolled up are read
    from the rollups (primary key ``(site_id, at)``: one row per period), the rest, the
    last minute or two, from the samples (``ix_devicesample_at``, or
    ``ix_devicesample_site_at`` for a site)."""
    scope = FLEET if site_id is None else site_id
    until = rolled_until(engine)
    periods: list[PeriodNumbers] = []
    with reading(engine) as conn:
        if until is not None and until >= buckets.start:
            periods += [
                PeriodNumbers(scope, aware(at), rep, bad, med, top)  # type: ignore[arg-type]
                for at, rep, bad, med, top in conn.execute(
                    select(
                        R.c.at, R.c.reporting, R.c.unhealthy, R.c.p95_median_ms, R.c.p95_max_ms
                    ).where(R.c.site_id == scope, R.c.at >= buckets.start, R.c.at < buckets.end)
                )
            ]
        raw_from = buckets.start if until is None else max(buckets.start, until + timedelta(0, 1))
        if raw_from < buckets.end:
            recent = [S.c.at >= raw_from, S.c.at < buckets.end]
            if site_id is not None:
                recent.append(S.c.site_id == site_id)
            periods += period_numbers(conn, recent, per_site=site_id is not None)
    by_bucket: dict[int, list[PeriodNumbers]] = {}
    for p in periods:
        i = buckets.index(p.at)
        if i is not None:
            by_bucket.setdefault(i, []).append(p)
    out = []
    for i, s in enumerate(buckets.starts()):
        ps = by_bucket.get(i, [])
        medians = [p.p95_median_ms for p in ps if p.p95_median_ms is not None]
        maxes = [p.p95_max_ms for p in ps if p.p95_max_ms is not None]
        out.append(
            StatusBucket(
                s,
                s + buckets.step,
                max((p.reporting for p in ps), default=0),
                max((p.reporting - p.unhealthy for p in ps), default=0),
                max((p.unhealthy for p in ps), default=0),
                percentile(medians, 50) if medians else None,
                max(maxes) if maxes else None,
            )
        )
    return out


def device_status_per_bucket(
    engine: Engine, buckets: Buckets, device_id: str
) -> list[DeviceBucket]:
    """One device's samples per bucket (primary key ``(device_id, at)``: a range scan)."""
    cols = [S.c.at, S.c.healthy, S.c.state, S.c.applied_revision, S.c.p95_ms, S.c.error_rate]
    q = (
        select(*cols, S.c.buffer_depth, S.c.buffer_drops)
        .where(S.c.device_id == device_id, S.c.at >= buckets.start, S.c.at < buckets.end)
        .order_by(S.c.at)
    )
    with reading(engine) as conn:
        rows = conn.execute(q).all()
    by_bucket: dict[int, list[Any]] = {}
    for row in rows:
        i = buckets.index(row.at)
        if i is not None:
            by_bucket.setdefault(i, []).append(row)
    out = []
    for i, s in enumerate(buckets.starts()):
        rs = by_bucket.get(i, [])
        last = rs[-1] if rs else None

        def worst(name: str, rs: list[Any] = rs) -> Any:
            return max((getattr(r, name) for r in rs if getattr(r, name) is not None), default=None)

        out.append(
            DeviceBucket(
                s,
                s + buckets.step,
                len(rs),
                all(r.healthy for r in rs) if rs else None,
                last.state if last else None,
                last.applied_revision if last else None,
                worst("p95_ms"),
                worst("error_rate"),
                worst("buffer_depth"),
                last.buffer_drops if last else None,
            )
        )
    return out


# -- fleet health now ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteHealth:
    """A site's enrolled devices now: ``online + degraded + offline == devices``.
    Offline: not heard of for OFFLINE_AFTER_INTERVALS status intervals (its profile's
    interval; as rollouts count it), or never; degraded: online and in state degraded;
    online: the rest. ``by_state`` counts every device of the site, in any state."""

    site_id: int
    site: str
    devices: int
    online: int
    degraded: int
    offline: int
    by_state: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FleetHealth:
    """The fleet's enrolled devices now, as ``SiteHealth`` for every site together;
    ``sites`` in name order, every site with a device in any state."""

    at: datetime
    devices: int
    online: int
    degraded: int
    offline: int
    by_state: dict[str, int]
    sites: list[SiteHealth]

    @property
    def awaiting_approval(self) -> int:
        return self.by_state.get(DeviceState.awaiting_approval.value, 0)


def _intervals(conn: Connection, default: int) -> dict[int, int]:
    """Each profile's status interval, from the revision its followers get."""
    followed = func.coalesce(Profile.released_revision, Profile.latest_revision)
    out = {}
    for pid, spec in conn.execute(
        select(Profile.id, ProfileRevision.spec).join(
            ProfileRevision,
            (ProfileRevision.profile_id == Profile.id) & (ProfileRevision.number == followed),
        )
    ):
        seconds = (spec or {}).get("policies", {}).get("interval_seconds", default)
        out[pid] = int(seconds)
    return out


def fleet_health(engine: Engine, interval_seconds: int, now: datetime | None = None) -> FleetHealth:
    """Devices by site, state and online now: one grouped pass over the device table
    (10,000 rows), the cut-off of each profile's devices by its interval.
    ``interval_seconds``: the controller's default (``device_interval_seconds``)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    rendered = [s.value for s in RENDERED]
    with reading(engine) as conn:
        intervals = _intervals(conn, interval_seconds)
        default = now - timedelta(seconds=OFFLINE_AFTER_INTERVALS * interval_seconds)
        cutoff: Any = default
        if intervals:
            cutoff = case(
                *[
                    (D.c.profile_id == pid, now - timedelta(seconds=OFFLINE_AFTER_INTERVALS * n))
                    for pid, n in intervals.items()
                ],
                else_=default,
            )
        online = case((D.c.last_seen_at >= cutoff, 1), else_=0).label("online")
        rows = conn.execute(
            select(D.c.site_id, D.c.state, online, func.count()).group_by(
                D.c.site_id, D.c.state, online
            )
        ).all()
        names = dict(conn.execute(select(Site.id, Site.name)).all())
    per_site: dict[int, dict[str, Any]] = {}
    for site_id, state, is_online, n in rows:
        site = per_site.setdefault(
            site_id, {"devices": 0, "online": 0, "degraded": 0, "offline": 0, "by_state": Counter()}
        )
        site["by_state"][state] += n
        if state not in rendered:
            continue
        site["devices"] += n
        if not is_online:
            site["offline"] += n
        elif state == DeviceState.degraded:
            site["degraded"] += n
        else:
            site["online"] += n
    sites = sorted(
        (
            SiteHealth(
                sid,
                names.get(sid, str(sid)),
                v["devices"],
                v["online"],
                v["degraded"],
                v["offline"],
                dict(v["by_state"]),
            )
            for sid, v in per_site.items()
        ),
        key=lambda h: h.site,
    )
    by_state: Counter[str] = Counter()
    for h in sites:
        by_state.update(h.by_state)
    return FleetHealth(
        now,
        sum(h.devices for h in sites),
        sum(h.online for h in sites),
        sum(h.degraded for h in sites),
        sum(h.offline for h in sites),
        dict(by_state),
        sites,
    )


@dataclass(frozen=True, slots=True)
class RevisionCount:
    """Devices of a profile running one revision (``None``: it has not said yet)."""

    profile: str | None
    revision: int | None
    devices: int


def revisions(engine: Engine) -> list[RevisionCount]:
    """Devices in service by profile and the revision they report running: one grouped
    pass over the device table, the most common first."""
    serving = [s.value for s in RENDERED]
    with reading(engine) as conn:
        rows = conn.execute(
            select(Profile.name, D.c.applied_revision, func.count())
            .select_from(D)
            .outerjoin(Profile, Profile.id == D.c.profile_id)
            .where(D.c.state.in_(serving))
            .group_by(Profile.name, D.c.applied_revision)
        ).all()
    counted = [RevisionCount(name, rev, n) for name, rev, n in rows]
    return sorted(counted, key=lambda r: (-r.devices, r.profile or "", r.revision or 0))


# -- rollout progress ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaveProgress:
    number: int
    step: str
    """As the plan wrote it: ``1``, ``5%``, ``100%``, a label group."""
    state: str
    devices: int
    counts: dict[str, int]
    """Devices by outcome (``DeviceOutcome``), every outcome present, zeros included."""


@dataclass(frozen=True, slots=True)
class RolloutProgress:
    rollout_id: int
    profile: str
    revision: int
    state: str
    current_wave: int | None
    """None once the rollout is over."""
    devices: int
    counts: dict[str, int]
    waves: list[WaveProgress]


def rollout_progress(engine: Engine, rollout_id: int) -> RolloutProgress:
    """Per wave, its devices by outcome: what the API's rollout detail says
    (``rollout_views.detail``), as dataclasses. NotFound for an unknown rollout."""
    with Session(engine) as s:
        return progress_of(detail(s, rollout_id))


def progress_of(d: dict[str, Any]) -> RolloutProgress:
    """A rollout detail the caller already read, as dataclasses."""
    return RolloutProgress(
        rollout_id=d["id"],
        profile=d["profile"],
        revision=d["revision"],
        state=d["state"],
        current_wave=d["current_wave"],
        devices=d["devices"],
        counts=dict(d["counts"]),
        waves=[
            WaveProgress(w["number"], w["step"], w["state"], w["devices"], dict(w["counts"]))
            for w in d["waves"]
        ],
    )
