"""Drift in the fleet (issue 14): windows stored from status reports, summed across
devices and scored against each model's drift reference.

**Storing.** A status report carries each model's latest closed window and any the
device had not delivered; they are stored keyed by (device, model, reference, start),
so a window sent again replaces the first (a runner restarted within a window sends
the merged counts). Only a report that is not a heartbeat reaches here.

**Scoring.** The fleet view groups windows by site, profile, model version (the model
file's digest) and reference, or by device, sums the counts of each window start, and
scores the sums with :mod:`edgefleet.drift.stats` against the reference's expected
counts: the worst PSI over every histogram (input features, outputs, confidences with
at least ``MIN_SAMPLES`` counts) decides the level. The reference is read from the
registry by the model's pinned reference once per digest (checked by digest), kept in
the ``driftreference`` table and in memory; until it can be read, a group shows the
worst of its devices' own scores (``scored_by: device``).

**Levels**, with the profile's ``drift.thresholds`` (defaults 0.1 and 0.25): PSI below
``investigate`` is ``ok``, up to ``act`` ``investigate``, above ``act`` ``act``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.db import delete_in_batches, reading, session_scope
from edgefleet.controller.models import (
    Device,
    DriftReference,
    DriftWindowRecord,
    Profile,
    ProfileRevision,
    Site,
)
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import shadow
from edgefleet.drift import stats
from edgefleet.drift.reference import Reference
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.wire import DriftPolicy, DriftWindow

log = logging.getLogger("edgefleet.controller")

LEVELS = ("ok", "investigate", "act")
RETRY_REFERENCE_S = 60.0
"""A reference the registry did not give is asked for again after this long."""
DEFAULT_HOURS = 24.0

_references: dict[str, Reference] = {}
"""Process-wide, by content digest: a digest names one document whichever controller
or registry it came from."""
_missing: dict[str, float] = {}


def level(psi: float | None, policy: DriftPolicy) -> str | None:
    if psi is None:
        return None
    if psi < policy.investigate:
        return "ok"
    return "investigate" if psi <= policy.act else "act"


# -- storing -------------------------------------------------------------------------


def record(rt: Runtime, device_id: str, windows: list[DriftWindow]) -> int:
    """Store the report's windows; returns how many were new or changed. Windows the
    controller holds already (each model's latest travels in every report) cost one
    read, no write."""
    t = DriftWindowRecord.__table__  # type: ignore[attr-defined]
    with reading(rt.engine) as conn:
        held = {
            (m, r, start): seen
            for m, r, start, seen in conn.execute(
                select(t.c.model, t.c.reference, t.c.start, t.c.seen).where(
                    t.c.device_id == device_id, t.c.start.in_({w.start for w in windows})
                )
            )
        }
    windows = [w for w in windows if held.get((w.model, w.reference, w.start)) != w.seen]
    if not windows:
        return 0
    changed = 0
    with session_scope(rt.engine) as s:
        device = s.get(Device, device_id)
        if device is None:
            return 0
        for w in windows:
            found = s.scalars(
                select(DriftWindowRecord).where(
                    DriftWindowRecord.device_id == device_id,
                    DriftWindowRecord.model == w.model,
                    DriftWindowRecord.reference == w.reference,
                    DriftWindowRecord.start == w.start,
                )
            ).first()
            if found is None:
                found = DriftWindowRecord(
                    device_id=device_id,
                    site_id=device.site_id,
                    model=w.model,
                    reference=w.reference,
                    start=w.start,
                    model_digest=w.digest,
                    seconds=w.seconds,
                    seen=w.seen,
                    samples=w.samples,
                )
            found.profile_id = device.profile_id
            found.model_digest, found.artifact = w.digest, w.artifact
            found.seconds, found.seen, found.samples = w.seconds, w.seen, w.samples
            found.counts, found.scores = list(w.counts), dict(w.scores)
            s.add(found)
            changed += 1
    return changed


# -- references ------------------------------------------------------------------------


def reference(
    rt: Runtime, digest: str, artifact: str, profile_id: int | None = None
) -> Reference | None:
    """The drift reference ``digest``, from memory, the database or (once) the registry;
    None while it cannot be read (logged, asked again after ``RETRY_REFERENCE_S``).

    The registry is asked only for an ``artifact`` a revision of the device's profile
    names: a device cannot send the controller to fetch from a host of its choosing."""
    found = _references.get(digest)
    if found is not None:
        return found
    with reading(rt.engine) as conn:
        row = conn.execute(
            select(DriftReference.document).where(DriftReference.digest == digest)  # type: ignore[call-overload]
        ).first()
    if row is not None:
        found = Reference.from_bytes(row[0].encode())
    else:
        if time.monotonic() < _missing.get(digest, 0.0) or not artifact:
            return None
        if not _in_profile(rt, profile_id, artifact):
            _missing[digest] = time.monotonic() + RETRY_REFERENCE_S
            log.warning(
                "drift reference %s: %s is not a model of the device's profile; not read",
                digest,
                artifact,
            )
            return None
        try:
            data = _fetch(rt, digest, artifact)
            found = Reference.from_bytes(data)
        except (EdgefleetError, OSError) as exc:
            _missing[digest] = time.monotonic() + RETRY_REFERENCE_S
            log.warning(
                "drift reference %s of %s cannot be read (devices' own scores are shown "
                "meanwhile): %s",
                digest,
                artifact,
                getattr(exc, "message", exc),
            )
            return None
        with session_scope(rt.engine) as s:
            if s.get(DriftReference, digest) is None:
                s.add(DriftReference(digest=digest, document=data.decode()))
    _references[digest] = found
    return found


def _in_profile(rt: Runtime, profile_id: int | None, artifact: str) -> bool:
    if profile_id is None:
        return False
    with Session(rt.engine) as s:
        specs = s.scalars(
            select(ProfileRevision.spec).where(ProfileRevision.profile_id == profile_id)
        ).all()
    return any(m.get("reference") == artifact for spec in specs for m in spec.get("models", []))


def _fetch(rt: Runtime, digest: str, artifact: str) -> bytes:
    """The reference layer of the model ``artifact`` (pinned by digest), checked to be
    ``digest``."""
    from edgefleet.controller.model_pins import _Auth, origin
    from edgefleet.models.artifact import describe
    from edgefleet.oci import reference as refs
    from edgefleet.oci.client import RegistryClient
    from edgefleet.oci.manifest import Manifest
    from edgefleet.oci.transport import Endpoint

    ref = refs.parse(artifact)
    if ref.digest is None:
        raise ConfigError(f"{artifact} is not pinned by digest")
    endpoint = Endpoint.parse(origin(rt.settings, ref.registry), timeout=15.0)
    with RegistryClient(endpoint, _Auth(rt.settings, rt.registry_tokens)) as client:
        manifest = Manifest.from_bytes(client.get_manifest(ref.repository, ref.digest).data)
        layer = describe(manifest).reference
        if layer is None or layer.digest != digest:
            raise ConfigError(f"the artifact has no drift reference layer {digest}")
        data = client.fetch_blob(ref.repository, digest)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ConfigError(f"the registry's drift reference does not hash to {digest}")
    return data


# -- the fleet view ----------------------------------------------------------------------


@dataclass
class _Group:
    key: dict[str, Any]
    profile_id: int | None = None
    artifact: str = ""
    reference: str = ""
    windows: dict[int, list[DriftWindowRecord]] = field(default_factory=lambda: defaultdict(list))


def view(
    rt: Runtime,
    *,
    site: str | None = None,
    model: str | None = None,
    by: str = "site",
    hours: float = DEFAULT_HOURS,
    latest_only: bool = False,
) -> dict[str, Any]:
    """Scores over time per group (``by`` site or device) and the groups whose latest
    window reads ``investigate`` or ``act`` (``alerts``); a group's latest is its newest
    window that scored. ``latest_only`` reads each device's newest window of each model
    with at least ``MIN_SAMPLES`` inferences and no history (alerts, gauges): what the
    overview and a scrape need, without the series."""
    since = int(time.time() - hours * 3600)
    rows = _windows(rt, since, site, model, latest_only)
    policies = _policies(rt, {r.profile_id for r, _, _, _ in rows})
    groups: dict[tuple[Any, ...], _Group] = {}
    for r, site_name, profile_name, device_name in rows:
        key = {
            "site": site_name,
            "profile": profile_name,
            "model": r.model,
            "version": r.model_digest,
            "reference": r.reference,
        }
        if by == "device":
            key = {"device": r.device_id, "device_name": device_name, **key}
        group = groups.setdefault((*tuple(key.values()), r.profile_id), _Group(key))
        group.artifact = r.artifact or group.artifact
        group.profile_id = r.profile_id
        group.windows[r.start].append(r)
    out = []
    for (*_, profile_id), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        policy = policies.get(profile_id) or DriftPolicy()
        out.append(_scored(rt, group, policy))
    alerts = [g for g in out if g["level"] in ("investigate", "act")]
    return {"by": by, "hours": hours, "groups": out, "alerts": alerts}


def _windows(
    rt: Runtime, since: int, site: str | None, model: str | None, latest_only: bool = False
) -> list[tuple[DriftWindowRecord, str, str | None, str | None]]:
    query = (
        select(DriftWindowRecord, Site.name, Profile.name, Device.name)
        .join(Site, Site.id == DriftWindowRecord.site_id)  # type: ignore[arg-type]
        .outerjoin(Profile, Profile.id == DriftWindowRecord.profile_id)  # type: ignore[arg-type]
        .outerjoin(Device, Device.id == DriftWindowRecord.device_id)  # type: ignore[arg-type]
        .where(DriftWindowRecord.start >= since)
        .order_by(DriftWindowRecord.start)  # type: ignore[arg-type]
    )
    if latest_only:
        w = DriftWindowRecord.__table__.alias("w")  # type: ignore[attr-defined]
        newest = (
            select(w.c.device_id, w.c.model, func.max(w.c.start).label("start"))
            .where(w.c.start >= since, w.c.samples >= stats.MIN_SAMPLES)
            .group_by(w.c.device_id, w.c.model)
            .subquery()
        )
        query = query.join(
            newest,
            (newest.c.device_id == DriftWindowRecord.device_id)
            & (newest.c.model == DriftWindowRecord.model)
            & (newest.c.start == DriftWindowRecord.start),
        )
    if site is not None:
        query = query.where(Site.name == site)
    if model is not None:
        query = query.where(DriftWindowRecord.model == model)
    with Session(rt.engine) as s:
        return [tuple(row) for row in s.execute(query).all()]  # type: ignore[misc]


def _policies(rt: Runtime, profile_ids: set[int | None]) -> dict[int | None, DriftPolicy]:
    """Each profile's drift policy, from its latest revision (the thresholds in force)."""
    out: dict[int | None, DriftPolicy] = {}
    wanted = [p for p in profile_ids if p is not None]
    if not wanted:
        return out
    with Session(rt.engine) as s:
        revisions = s.scalars(
            select(ProfileRevision)
            .where(ProfileRevision.profile_id.in_(wanted))  # type: ignore[attr-defined]
            .order_by(ProfileRevision.number)  # type: ignore[arg-type]
        ).all()
        for rev in revisions:  # the highest number last: it wins
            out[rev.profile_id] = DriftPolicy.from_profile(rev.spec) or DriftPolicy()
    return out


def _scored(rt: Runtime, group: _Group, policy: DriftPolicy) -> dict[str, Any]:
    ref = reference(rt, group.key["reference"], group.artifact, group.profile_id)
    series = []
    for _start, windows in sorted(group.windows.items()):
        point = _point(ref, windows)
        point["level"] = level(point["psi"], policy)
        series.append(point)
    # a window closed with few inferences (traffic stopped mid-window) scores nothing:
    # the level is the newest window's that scored
    scored = [p for p in series if p["psi"] is not None]
    latest = scored[-1] if scored else series[-1]
    return {
        **group.key,
        "thresholds": {"investigate": policy.investigate, "act": policy.act},
        "scored_by": "controller" if ref is not None else "device",
        "level": latest["level"],
        "latest": latest,
        "series": series,
    }


def _point(ref: Reference | None, windows: list[DriftWindowRecord]) -> dict[str, Any]:
    first = windows[0]
    point: dict[str, Any] = {
        "start": first.start,
        "seconds": first.seconds,
        "devices": len({w.device_id for w in windows}),
        "seen": sum(w.seen for w in windows),
        "samples": sum(w.samples for w in windows),
        "psi": None,
        "ks": None,
        "js": None,
        "histogram": None,
    }
    if ref is None:
        return point | _device_scores(windows)
    histograms = ref.histograms()
    sizes = [h.bins for _, h in histograms]
    counts = [0] * sum(sizes)
    for w in windows:
        if len(w.counts) == len(counts):
            counts = [a + b for a, b in zip(counts, w.counts, strict=True)]
    worst: dict[str, Any] = {}
    offset = 0
    for (label, h), size in zip(histograms, sizes, strict=True):
        live = counts[offset : offset + size]
        offset += size
        if sum(live) < stats.MIN_SAMPLES:
            continue
        s = stats.scores(h.counts, live)
        if not worst or s["psi"] > worst["psi"]:
            worst = {**s, "histogram": label}
    return point | {k: round(v, 4) if isinstance(v, float) else v for k, v in worst.items()}


def _device_scores(windows: list[DriftWindowRecord]) -> dict[str, Any]:
    """The worst PSI the devices scored their own windows with."""
    worst: dict[str, Any] = {}
    for w in windows:
        for label, s in w.scores.items():
            psi = s.get("psi")
            if isinstance(psi, int | float) and (not worst or psi > worst["psi"]):
                name = s.get("feature", label) if label == "inputs" else label
                worst = {"psi": psi, "ks": s.get("ks"), "js": s.get("js"), "histogram": name}
    return worst


def worst_during(
    s: Session, rt: Runtime, devices: list[str], model: str, since: int
) -> dict[str, Any] | None:
    """The worst PSI of ``model``'s windows on ``devices`` that ended after ``since`` (a
    window aligned on the clock may have started a little before), each window start's
    counts summed across the devices and scored as the fleet
    view scores them (``{"psi", "histogram", "start"}``; None when no window scored): what
    a rollout's ``max_drift`` gate reads of its shadow phase."""
    if not devices:
        return None
    rows = s.scalars(
        select(DriftWindowRecord).where(
            DriftWindowRecord.device_id.in_(devices),  # type: ignore[attr-defined]
            DriftWindowRecord.model == model,
            DriftWindowRecord.start + DriftWindowRecord.seconds > since,
        )
    ).all()
    by_start: dict[tuple[str, int], list[DriftWindowRecord]] = defaultdict(list)
    for w in rows:
        by_start[(w.reference, w.start)].append(w)
    worst: dict[str, Any] | None = None
    for (ref_digest, start), windows in sorted(by_start.items()):
        ref = reference(rt, ref_digest, windows[0].artifact, windows[0].profile_id)
        point = _point(ref, windows)
        if point["psi"] is not None and (worst is None or point["psi"] > worst["psi"]):
            worst = {"psi": point["psi"], "histogram": point["histogram"], "start": start}
    return worst


# -- Prometheus ----------------------------------------------------------------------------

GAUGE_HOURS = 6.0
"""The gauges read the windows of the last hours only: a scrape stays cheap."""


def gauges(rt: Runtime) -> tuple[list[tuple[str, str, float]], dict[str, int]]:
    """(site, model, worst latest PSI) and the count of device-model pairs per level."""
    worst: dict[tuple[str, str], float] = {}
    for g in view(rt, by="site", hours=GAUGE_HOURS, latest_only=True)["groups"]:
        psi = g["latest"]["psi"]
        if psi is not None:
            key = (g["site"], g["model"])
            worst[key] = max(psi, worst.get(key, 0.0))
    levels = dict.fromkeys(LEVELS, 0)
    for g in view(rt, by="device", hours=GAUGE_HOURS, latest_only=True)["groups"]:
        if g["level"] is not None:
            levels[g["level"]] += 1
    return [(s, m, p) for (s, m), p in sorted(worst.items())], levels


# -- retention -------------------------------------------------------------------------------

PRUNE_BATCH = 5000
PRUNE_EVERY_S = 600.0


def prune(rt: Runtime, before: int) -> int:
    """Delete windows that started before ``before`` (epoch seconds), a batch per
    transaction so writers never wait long behind it; returns how many went."""
    table = DriftWindowRecord.__table__  # type: ignore[attr-defined]
    return delete_in_batches(rt.engine, table, table.c.start < before, PRUNE_BATCH)


async def run_retention(rt: Runtime) -> None:
    """The background loop of every worker: drift and shadow windows older than
    ``drift_retention_days``."""
    while True:
        await asyncio.sleep(PRUNE_EVERY_S)
        before = int(time.time()) - rt.settings.drift_retention_days * 86400
        try:
            gone = await run_in_threadpool(prune, rt, before)
            # the shadow comparisons' agreement windows are kept as long
            gone_shadow = await run_in_threadpool(shadow.prune, rt, before)
        except Exception as exc:  # the database is away: the next run tries again
            log.warning("pruning old drift and shadow windows failed: %s", exc)
            continue
        if gone_shadow:
            log.info(
                "deleted %d shadow agreement windows older than %d days",
                gone_shadow,
                rt.settings.drift_retention_days,
            )
        if gone:
            log.info(
                "deleted %d drift windows older than %d days",
                gone,
                rt.settings.drift_retention_days,
            )
