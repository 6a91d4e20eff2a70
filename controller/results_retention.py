"""Results older than ``results_retention_days`` are deleted, in the background of every
worker, a batch per transaction so writers never wait long behind it.

Results are the one table that grows with the fleet's work rather than its size (10,000
devices at one result every 10 s are 86 million rows a day), so an operator chooses how
long to keep them; unset, nothing is deleted. Age is the result's own ``time`` (the
device's clock corrected at arrival), which ``ix_result_time`` indexes. The setting may
not be shorter than the days an agent's buffer can hold a result: a deleted key sent again
would be stored again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.db import delete_in_batches
from edgefleet.controller.models import Result

if TYPE_CHECKING:
    from edgefleet.controller.runtime import Runtime

log = logging.getLogger("edgefleet.controller.results")

_R = Result.__table__  # type: ignore[attr-defined]
PRUNE_BATCH = 5000
"""Rows per transaction: on SQLite about 30 ms of the write lock."""
RUN_BUDGET_SECONDS = 20.0
"""A run stops after this long and goes on at the next, so other upkeep is not starved."""
EVERY_SECONDS = 60.0


def prune(engine: Engine, before: datetime, budget_seconds: float = RUN_BUDGET_SECONDS) -> int:
    """Delete results whose time is before ``before``, PRUNE_BATCH per transaction, until
    none is left or the budget is spent (one batch at least); returns how many went."""
    return delete_in_batches(engine, _R, _R.c.time < before, PRUNE_BATCH, budget_seconds)


async def run(rt: Runtime) -> None:
    """The background loop: once a minute while a retention is set."""
    days = rt.settings.results_retention_days
    if days is None:
        return
    while True:
        await asyncio.sleep(EVERY_SECONDS)
        try:
            before = datetime.now(UTC) - timedelta(days=days)
            rt.metrics.results_pruned.inc(await run_in_threadpool(prune, rt.engine, before))
        except Exception:
            log.exception("deleting results older than %s days failed; will retry", days)
