"""The status history's upkeep, in the background of every worker: roll finished sample
periods up into a few numbers per site and for the fleet, and prune what is older than
``status_sample_retention_days``, in small batches.

Rollups are what fleet and site charts read: a day of the fleet is 1,440 rows however
many devices report. A period is rolled up once it ended ``margin`` seconds ago (every
worker's flush has written it by then); workers that roll up the same period write the
same rows, and the key keeps one. Samples flushed after their period was rolled up are
kept, but not in the rollup (a flush late by more than the margin: the database was
away).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, Connection, case, delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.db import reading, writing
from edgefleet.controller.models import DeviceSample, SampleRollup, aware

if TYPE_CHECKING:
    from edgefleet.controller.runtime import Runtime

log = logging.getLogger("edgefleet.controller.samples")

FLEET = 0
"""The ``site_id`` of the whole fleet's rollup rows."""
MAX_PERIODS = 120
"""Periods rolled up per run at most, so a backlog is worked off in small pieces."""
PRUNE_BATCH = 5000
PRUNE_BATCHES = 20
"""Rows deleted per transaction, and transactions per run (the rest waits a run)."""

S = DeviceSample.__table__  # type: ignore[attr-defined]
R = SampleRollup.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class PeriodNumbers:
    """One sample period of a site (or of the fleet) in numbers."""

    site_id: int
    at: datetime
    reporting: int
    unhealthy: int
    p95_median_ms: float | None
    p95_max_ms: float | None


def period_numbers(
    conn: Connection, conditions: Sequence[ColumnElement[bool]], per_site: bool
) -> list[PeriodNumbers]:
    """The numbers of each period of the samples that meet ``conditions``, per site
    (``per_site``) or for the whole fleet (site ``FLEET``), summed by the database: a
    period of 20,000 devices read into Python was 20,000 rows whose objects lived long
    enough for a collection of the worker's young objects to walk them (168 ms, every
    request of the worker waiting). The median is nearest-rank, as every percentile in
    Edgefleet: the value at rank ceil(n / 2)."""
    keys = [S.c.site_id, S.c.at] if per_site else [S.c.at]
    counted = (
        select(
            *keys,
            func.count(),
            func.sum(case((S.c.healthy, 0), else_=1)),
            func.max(S.c.p95_ms),
        )
        .where(*conditions)
        .group_by(*keys)
    )
    ranked = (
        select(
            *keys,
            S.c.p95_ms,
            func.row_number().over(partition_by=keys, order_by=S.c.p95_ms).label("rank"),
            func.count().over(partition_by=keys).label("n"),
        )
        .where(*conditions, S.c.p95_ms.is_not(None))
        .subquery()
    )
    middle = select(*(ranked.c[k.name] for k in keys), ranked.c.p95_ms).where(
        (ranked.c.rank * 2 - ranked.c.n).in_([0, 1])  # rank == ceil(n / 2)
    )
    medians = {tuple(row[:-1]): row[-1] for row in conn.execute(middle)}
    out = []
    for row in conn.execute(counted):
        key, (reporting, unhealthy, top) = tuple(row[: len(keys)]), row[len(keys) :]
        site_id, at = key if per_site else (FLEET, key[0])
        out.append(
            PeriodNumbers(
                site_id,
                aware(at),
                reporting,
                int(unhealthy),
                medians.get(key),
                top,  # type: ignore[arg-type]
            )
        )
    return sorted(out, key=lambda n: (n.at, n.site_id))


def rolled_until(engine: Engine) -> datetime | None:
    """The newest rolled-up period (its start)."""
    with reading(engine) as conn:
        return aware(conn.scalar(select(func.max(R.c.at)).where(R.c.site_id == FLEET)))


def roll_up(engine: Engine, period_seconds: int, now: datetime, margin_seconds: float) -> int:
    """Roll up the finished periods after the newest rolled-up one (at most MAX_PERIODS,
    from the first that has samples); returns how many periods were written."""
    step = timedelta(seconds=period_seconds)
    last = rolled_until(engine)
    with reading(engine) as conn:
        first_q = select(func.min(S.c.at))
        if last is not None:
            first_q = first_q.where(S.c.at > last)
        first = aware(conn.scalar(first_q))
        if first is None:
            return 0
        end = min(first + MAX_PERIODS * step, now - timedelta(seconds=margin_seconds) - step)
        if end < first:
            return 0
        period = [S.c.at >= first, S.c.at <= end]
        made = period_numbers(conn, period, per_site=True)
        made += period_numbers(conn, period, per_site=False)
    if not made:
        return 0
    with writing(engine) as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(R).on_conflict_do_nothing(),
            [
                {
                    "site_id": n.site_id,
                    "at": n.at,
                    "reporting": n.reporting,
                    "unhealthy": n.unhealthy,
                    "p95_median_ms": n.p95_median_ms,
                    "p95_max_ms": n.p95_max_ms,
                }
                for n in made
            ],
        )
    return sum(n.site_id == FLEET for n in made)


def prune(engine: Engine, before: datetime) -> int:
    """Delete samples and rollups of periods before ``before``, PRUNE_BATCH rows per
    transaction (a writer never waits long behind it), PRUNE_BATCHES transactions at most;
    returns how many rows went."""
    gone = 0
    for table, key in ((S, (S.c.device_id, S.c.at)), (R, (R.c.site_id, R.c.at))):
        for _ in range(PRUNE_BATCHES):
            batch = select(*key).where(table.c.at < before).limit(PRUNE_BATCH)
            with writing(engine) as conn:
                n = conn.execute(delete(table).where(tuple_(*key).in_(batch))).rowcount
            gone += n
            if n < PRUNE_BATCH:
                break
    return gone


def upkeep(rt: Runtime, now: datetime | None = None) -> tuple[int, int]:
    """One run: roll up, then prune. Returns (periods rolled up, rows pruned)."""
    s = rt.settings
    now = now or datetime.now(UTC)
    margin = max(10.0, 3 * s.last_seen_flush_seconds)
    rolled = roll_up(rt.engine, s.status_sample_seconds, now, margin)
    pruned = prune(rt.engine, now - timedelta(days=s.status_sample_retention_days))
    return rolled, pruned


async def run(rt: Runtime) -> None:
    """The background loop, once per sample period."""
    while True:
        await asyncio.sleep(rt.settings.status_sample_seconds)
        try:
            await run_in_threadpool(upkeep, rt)
        except Exception:
            log.exception("rolling up or pruning status samples failed; will retry")
