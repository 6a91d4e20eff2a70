"""Shadow comparisons in the fleet (issue 14): agreement windows stored from status
reports, and their figures summed by device, site, profile, model and key.

**Storing.** A status report carries the closed windows the device had not delivered
yet; each is stored keyed by (device, key, model, candidate digest, start), so a window
sent again (the report was lost, a runner restarted) replaces the first. Only a report
that is not a heartbeat, and has windows, reaches here: a report without any costs
nothing more than before.

**Figures** of a group of windows (``figures``):

- ``agreement``: top-1 agreement, the sum of ``top1_agree`` over the sum of
  ``top1_total`` (None when no compared output read as class scores);
- ``mad``: mean absolute difference, the sum of ``abs_diff_sum`` over the sum of
  ``compared`` (each window's sum is of per-inference means);
- ``max_abs_diff``: the largest single output difference of any window;
- ``active_p95_ms`` / ``candidate_p95_ms``: the mean of the windows' p95 latencies
  (each window weighs the same; a p95 of p95s would follow the single slowest window).
  A mean rather than a median because the fleet view sums in the database, where
  SQLite has no median: a fleet's windows of a day are millions of rows;
- ``compared``, ``skipped``, ``errors``, ``devices``, ``windows``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, distinct, func, select
from sqlmodel import Session

from edgefleet.controller.db import delete_in_batches, reading, session_scope
from edgefleet.controller.models import Device, Profile, ShadowWindowRecord, Site
from edgefleet.controller.runtime import Runtime
from edgefleet.errors import BadRequest
from edgefleet.wire import ShadowWindow

DEFAULT_HOURS = 24.0
BY = ("site", "device", "model", "profile")
"""The groupings of the agreement view; every group is also split by key and model."""

# -- storing -------------------------------------------------------------------------


def _identity(w: ShadowWindow) -> tuple[str, str, str, int]:
    return (w.key, w.model, w.candidate_digest, w.start)


def record(rt: Runtime, device_id: str, windows: list[ShadowWindow]) -> int:
    """Store the report's windows; returns how many were new or changed. Windows held
    already with the same count cost one read, no write."""
    t = ShadowWindowRecord.__table__  # type: ignore[attr-defined]
    with reading(rt.engine) as conn:
        held = {
            (k, m, c, start): (compared, skipped, errors)
            for k, m, c, start, compared, skipped, errors in conn.execute(
                select(
                    t.c.key,
                    t.c.model,
                    t.c.candidate_digest,
                    t.c.start,
                    t.c.compared,
                    t.c.skipped,
                    t.c.errors,
                ).where(t.c.device_id == device_id, t.c.start.in_({w.start for w in windows}))
            )
        }
    windows = [w for w in windows if held.get(_identity(w)) != (w.compared, w.skipped, w.errors)]
    if not windows:
        return 0
    with session_scope(rt.engine) as s:
        device = s.get(Device, device_id)
        if device is None:
            return 0
        for w in {_identity(w): w for w in windows}.values():  # the last copy in a report wins
            found = None
            if _identity(w) in held:  # a new window (the usual case) costs no look-up
                found = s.scalars(
                    select(ShadowWindowRecord).where(
                        ShadowWindowRecord.device_id == device_id,
                        ShadowWindowRecord.key == w.key,
                        ShadowWindowRecord.model == w.model,
                        ShadowWindowRecord.candidate_digest == w.candidate_digest,
                        ShadowWindowRecord.start == w.start,
                    )
                ).first()
            if found is None:
                found = ShadowWindowRecord(
                    device_id=device_id,
                    site_id=device.site_id,
                    key=w.key,
                    model=w.model,
                    candidate_digest=w.candidate_digest,
                    start=w.start,
                    active_digest=w.active_digest,
                    seconds=w.seconds,
                    compared=w.compared,
                    skipped=w.skipped,
                    errors=w.errors,
                    top1_total=w.top1_total,
                    top1_agree=w.top1_agree,
                    abs_diff_sum=w.abs_diff_sum,
                    abs_diff_max=w.abs_diff_max,
                )
            found.profile_id = device.profile_id
            found.active_digest, found.seconds = w.active_digest, w.seconds
            found.compared, found.skipped, found.errors = w.compared, w.skipped, w.errors
            found.top1_total, found.top1_agree = w.top1_total, w.top1_agree
            found.abs_diff_sum, found.abs_diff_max = w.abs_diff_sum, w.abs_diff_max
            found.active_p95_ms = w.active_latency.p95_ms
            found.candidate_p95_ms = w.candidate_latency.p95_ms
            s.add(found)
    return len(windows)


# -- figures ---------------------------------------------------------------------------


def figures(windows: Iterable[Any]) -> dict[str, Any]:
    """The agreement figures of ``windows`` summed (see the module's docstring): stored
    windows or rows with their columns. For a wave's windows; the fleet view sums in
    the database (``view``) and derives the same figures (``_derived``)."""
    rows = list(windows)
    active = [w.active_p95_ms for w in rows if w.active_p95_ms is not None]
    candidate = [w.candidate_p95_ms for w in rows if w.candidate_p95_ms is not None]
    return _derived(
        devices=len({w.device_id for w in rows}),
        windows=len(rows),
        compared=sum(w.compared for w in rows),
        skipped=sum(w.skipped for w in rows),
        errors=sum(w.errors for w in rows),
        top1_total=sum(w.top1_total for w in rows),
        top1_agree=sum(w.top1_agree for w in rows),
        diff=sum(w.abs_diff_sum for w in rows),
        max_abs_diff=max((w.abs_diff_max for w in rows), default=None),
        active_p95_ms=sum(active) / len(active) if active else None,
        candidate_p95_ms=sum(candidate) / len(candidate) if candidate else None,
    )


_SUMMED = ("compared", "skipped", "errors", "top1_total", "top1_agree")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _derived(
    *,
    devices: int,
    windows: int,
    compared: int,
    skipped: int,
    errors: int,
    top1_total: int,
    top1_agree: int,
    diff: float,
    max_abs_diff: float | None,
    active_p95_ms: float | None,
    candidate_p95_ms: float | None,
) -> dict[str, Any]:
    return {
        "devices": devices,
        "windows": windows,
        "compared": compared,
        "skipped": skipped,
        "errors": errors,
        "top1_total": top1_total,
        "top1_agree": top1_agree,
        "agreement": round(top1_agree / top1_total, 6) if top1_total else None,
        "mad": round(diff / compared, 9) if compared else None,
        "max_abs_diff": max_abs_diff,
        "active_p95_ms": round(active_p95_ms, 3) if active_p95_ms is not None else None,
        "candidate_p95_ms": round(candidate_p95_ms, 3) if candidate_p95_ms is not None else None,
    }


_FIGURE_COLUMNS = (
    "device_id",
    "model",
    "candidate_digest",
    "start",
    "compared",
    "skipped",
    "errors",
    "top1_total",
    "top1_agree",
    "abs_diff_sum",
    "abs_diff_max",
    "active_p95_ms",
    "candidate_p95_ms",
)


def windows_of(s: Session, key: str, devices: Iterable[str] | Select[Any]) -> list[Any]:
    """The windows of comparison ``key`` the given devices (ids, or a query of them)
    reported,
    as rows of the columns ``figures`` reads: a wave of a thousand devices holds ten
    thousand windows, which ORM objects would take most of a second to build."""
    wanted = devices if isinstance(devices, Select) else list(devices)
    if isinstance(wanted, list) and not wanted:
        return []
    t = ShadowWindowRecord.__table__  # type: ignore[attr-defined]
    query = select(*(t.c[name] for name in _FIGURE_COLUMNS)).where(
        t.c.key == key, t.c.device_id.in_(wanted)
    )
    return list(s.execute(query).all())


def view(
    rt: Runtime,
    *,
    by: str = "site",
    key: str | None = None,
    site: str | None = None,
    model: str | None = None,
    hours: float = DEFAULT_HOURS,
) -> dict[str, Any]:
    """Agreement figures over the last ``hours`` per group: ``by`` site, device, profile
    or model, each split by key (``parent``, ``rollout-<id>``), model and candidate."""
    if by not in BY:
        raise BadRequest(f"by must be one of {', '.join(BY)}, not {by!r}", code="bad_grouping")
    since = int(time.time() - hours * 3600)
    t = ShadowWindowRecord.__table__  # type: ignore[attr-defined]
    heads = {
        "site": [Site.name.label("site")],  # type: ignore[attr-defined]
        "device": [
            t.c.device_id.label("device"),
            Device.name.label("device_name"),  # type: ignore[attr-defined]
            Site.name.label("site"),  # type: ignore[attr-defined]
        ],
        "profile": [Profile.name.label("profile")],  # type: ignore[attr-defined]
        "model": [],
    }[by] + [t.c.key, t.c.model, t.c.candidate_digest.label("candidate")]
    sums = [
        func.count(distinct(t.c.device_id)).label("devices"),
        func.count().label("windows"),
        *(func.sum(t.c[c]).label(c) for c in _SUMMED),
        func.sum(t.c.abs_diff_sum).label("diff"),
        func.max(t.c.abs_diff_max).label("max_abs_diff"),
        func.avg(t.c.active_p95_ms).label("active_p95_ms"),
        func.avg(t.c.candidate_p95_ms).label("candidate_p95_ms"),
        func.max(t.c.start).label("last_start"),
    ]
    query = (
        select(*heads, *sums)
        .join(Site, Site.id == t.c.site_id)  # type: ignore[arg-type]
        .outerjoin(Profile, Profile.id == t.c.profile_id)  # type: ignore[arg-type]
        .outerjoin(Device, Device.id == t.c.device_id)  # type: ignore[arg-type]
        .where(t.c.start >= since)
        .group_by(*heads)
    )
    if key is not None:
        query = query.where(t.c.key == key)
    if site is not None:
        query = query.where(Site.name == site)
    if model is not None:
        query = query.where(t.c.model == model)
    with reading(rt.engine) as conn:
        rows = [row._mapping for row in conn.execute(query)]
    names = [column.name for column in heads]
    out = [
        {name: m[name] for name in names}
        | _derived(
            devices=m["devices"],
            windows=m["windows"],
            **{c: int(m[c]) for c in _SUMMED},
            diff=float(m["diff"]),
            max_abs_diff=m["max_abs_diff"],
            active_p95_ms=_float(m["active_p95_ms"]),
            candidate_p95_ms=_float(m["candidate_p95_ms"]),
        )
        | {"last_start": m["last_start"]}
        for m in rows
    ]
    out.sort(key=lambda g: tuple(str(g[name]) for name in names))
    return {"by": by, "hours": hours, "key": key, "groups": out}


# -- Prometheus --------------------------------------------------------------------------

GAUGE_HOURS = 6.0
"""The gauges read the windows of the last hours only: a scrape stays cheap."""


def gauges(rt: Runtime) -> list[tuple[str, str, float | None, float | None, int]]:
    """(model, key, agreement, MAD, compared) over the last ``GAUGE_HOURS``: a few series,
    per model and key, never per device."""
    found = view(rt, by="model", hours=GAUGE_HOURS)["groups"]
    merged: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in found:  # candidates of one model and key together
        merged.setdefault((g["model"], g["key"]), []).append(g)
    out = []
    for (model, key), gs in sorted(merged.items()):
        total = sum(g["top1_total"] for g in gs)
        agree = sum(g["top1_agree"] for g in gs)
        compared = sum(g["compared"] for g in gs)
        diff = sum((g["mad"] or 0.0) * g["compared"] for g in gs)
        out.append(
            (
                model,
                key,
                agree / total if total else None,
                diff / compared if compared else None,
                compared,
            )
        )
    return out


# -- retention -------------------------------------------------------------------------------

PRUNE_BATCH = 5000


def prune(rt: Runtime, before: int) -> int:
    """Delete windows that started before ``before`` (epoch seconds), a batch per
    transaction; kept as long as drift windows (``drift_retention_days``)."""
    table = ShadowWindowRecord.__table__  # type: ignore[attr-defined]
    return delete_in_batches(rt.engine, table, table.c.start < before, PRUNE_BATCH)
