"""The numbers behind the console's charts, from the real app's database on SQLite and
PostgreSQL: devices enrol, report status and upload results through the API, then the
series queries read them per bucket. Also the status history itself: one sample per
device per period, heartbeats sampled with no database write on the request path,
rollups equal to the samples they were made of, retention."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, func, select

from edgefleet.controller import sample_rollup
from edgefleet.controller.console import series
from edgefleet.controller.console.series import Buckets
from edgefleet.controller.db import WRITE_BEHIND_CHUNK, reading, writing
from edgefleet.controller.models import DeviceSample, SampleRollup, Site, aware
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.settings import Settings, load_settings
from edgefleet.controller.status_samples import StatusSampler, values_of
from edgefleet.errors import BadRequest, NotFound
from edgefleet.percentile import percentile
from edgefleet.wire import DeviceState, StatusReport
from tests.support.apiclient import Api, TestDevice
from tests.support.sqlwatch import request_statements

T0 = datetime(2030, 1, 1, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)
HOURLY = {"policies": {"interval_seconds": 3600}}


@pytest.fixture
def sample_seconds() -> int:
    return 3600


@pytest.fixture
def settings(tmp_path: Any, database_url: str | None, sample_seconds: int) -> Settings:
    """As the suite's, but nothing is written behind unless the test flushes: what a
    request writes is then exactly what it wrote."""
    return load_settings(
        data_dir=tmp_path / "controller",
        database_url=database_url,
        device_interval_seconds=1,
        last_seen_flush_seconds=3600,
        gitops_debounce_seconds=0.2,
        status_sample_seconds=sample_seconds,
    )


def rt_of(api: Api) -> Runtime:
    return api.client.app.state.rt  # type: ignore[attr-defined,no-any-return]


def device(api: Api, site: str = "shop-1", profile: str | None = None) -> TestDevice:
    if not any(s["name"] == site for s in api.ok("GET", "/sites", api.admin)):
        api.site(site)
    extra = {"profile": profile} if profile else {}
    return api.device(api.token(site=site, **extra)["token"])


def site_id(api: Api, name: str) -> int:
    with rt_of(api).engine.connect() as conn:
        return conn.scalar(select(Site.id).where(Site.name == name))  # type: ignore[return-value]


def report(api: Api, dev: TestDevice, **body: Any) -> str:
    return api.ok("POST", f"/devices/{dev.id}/status", dev.access_token, json=body)["state"]  # type: ignore[no-any-return]


def upload(
    api: Api, dev: TestDevice, minutes: list[float], epoch: str = "00000000000000e1"
) -> None:
    """Results dated ``minutes`` after T0 by the device's wall clock (no boot: kept)."""
    records = [
        {
            "seq": i + 1,
            "wall": (T0 + timedelta(minutes=m)).timestamp(),
            "mono": 0.0,
            "digest": "sha256:" + "ab" * 32,
            "payload": json.dumps({"n": i}),
        }
        for i, m in enumerate(minutes)
    ]
    body = {"epoch": epoch, "wall": time.time(), "mono": 5000.0, "records": records}
    r = api.call("POST", f"/devices/{dev.id}/results", dev.access_token, json=body)
    assert r.status_code == 200, r.text


def samples(api: Api, device_id: str | None = None) -> list[Any]:
    q = select(DeviceSample.__table__).order_by("at")  # type: ignore[attr-defined]
    if device_id:
        q = q.where(DeviceSample.__table__.c.device_id == device_id)  # type: ignore[attr-defined]
    with rt_of(api).engine.connect() as conn:
        return list(conn.execute(q).all())


def report_at(rt: Runtime, device_id: str, at: datetime, site: int, **body: Any) -> None:
    """A report sampled at ``at``: the sampler as the status path feeds it, with the clock
    of that moment (history cannot be posted through the API, which dates it now)."""
    rep = StatusReport.model_validate(body)
    state = DeviceState.ready if rep.health.ok else DeviceState.degraded
    rt.status_samples.record(device_id, values_of(rep, state, site), now=at.timestamp())


# -- buckets -------------------------------------------------------------------------------


def test_buckets_align_on_the_epoch_and_the_last_holds_now() -> None:
    now = datetime(2030, 1, 1, 10, 17, 42, tzinfo=UTC)
    b = series.last_day(now)
    assert (b.start, b.end, b.count) == (datetime(2029, 12, 31, 10, 30, tzinfo=UTC), b.end, 48)
    assert b.end == datetime(2030, 1, 1, 10, 30, tzinfo=UTC)
    assert b.index(now) == 47 and b.index(b.start) == 0 and b.index(b.end) is None
    assert b.index(b.start - timedelta(microseconds=1)) is None
    paris = now.astimezone(ZoneInfo("Europe/Paris"))
    assert series.last_day(paris) == b, "an instant is an instant, whatever its zone"
    hour = series.last_hour(now)
    assert hour.start == datetime(2030, 1, 1, 9, 18, tzinfo=UTC) and hour.count == 60
    with pytest.raises(BadRequest, match="1 to 500 buckets"):
        Buckets.ending(0, HALF_HOUR, now)
    with pytest.raises(BadRequest, match="whole seconds"):
        Buckets.ending(10, timedelta(milliseconds=1500), now)


# -- results -------------------------------------------------------------------------------


def test_results_are_counted_in_the_bucket_of_their_time_for_fleet_site_and_device(
    api: Api,
) -> None:
    a1, a2, b1 = device(api, "shop-a"), device(api, "shop-a"), device(api, "shop-b")
    # Bucket edges at 00:00, 00:30, ...: 29.999 min is the first bucket, 30 the second.
    upload(api, a1, [-0.001, 0, 1, 29.999, 30, 30.5, 1439.99, 1440])
    upload(api, a2, [61, 62, 63])
    upload(api, b1, [0.5, 90])
    buckets = Buckets.ending(48, HALF_HOUR, T0 + timedelta(hours=23, minutes=59))
    assert buckets.start == T0
    engine = rt_of(api).engine

    def counts(**scope: Any) -> dict[int, int]:
        got = series.results_per_bucket(engine, buckets, **scope)
        assert [p.start for p in got] == buckets.starts()
        assert all(p.end - p.start == HALF_HOUR for p in got)
        return {i: p.results for i, p in enumerate(got) if p.results}

    assert counts() == {0: 4, 1: 2, 2: 3, 3: 1, 47: 1}
    assert counts(site_id=site_id(api, "shop-a")) == {0: 3, 1: 2, 2: 3, 47: 1}
    assert counts(site_id=site_id(api, "shop-b")) == {0: 1, 3: 1}
    assert counts(device_id=a2.id) == {2: 3}
    assert counts(device_id="no-such-device") == {}
    minute = Buckets.ending(60, timedelta(minutes=1), T0 + timedelta(minutes=59, seconds=30))
    by_minute = series.results_per_bucket(engine, minute, site_id=site_id(api, "shop-a"))
    assert {i: p.results for i, p in enumerate(by_minute) if p.results} == {
        0: 1,
        1: 1,
        29: 1,
        30: 2,
    }


# -- status history: the sampler -----------------------------------------------------------


def test_a_heartbeat_is_sampled_without_a_database_write_on_the_request_path(api: Api) -> None:
    rt = rt_of(api)
    dev = device(api)
    body = {"applied_revision": 1, "inference": {"p95_ms": 12.5, "error_rate": 0.02}}
    assert report(api, dev, **body) == "ready"
    assert rt.status_samples.pending() == 1
    assert rt.status_samples.flush() == 1
    (first,) = samples(api)
    # The next period: a heartbeat (the same report) must give it its sample from memory.
    rt.status_samples._sampled.clear()  # as if the period had just turned
    with request_statements(rt.engine) as statements:
        assert report(api, dev, **body) == "ready"
    assert statements == [], "a heartbeat touched the database"
    assert rt.status_samples.pending() == 1
    rt.status_samples.flush()
    rows = samples(api)
    assert len(rows) == 1, "the same period twice must stay one sample"
    assert (first.p95_ms, first.error_rate, first.healthy, first.state) == (
        12.5,
        0.02,
        True,
        "ready",
    )
    assert first.site_id == site_id(api, "shop-1") and first.applied_revision == 1


@pytest.mark.parametrize("sample_seconds", [1])
def test_at_most_one_sample_per_device_per_period_heartbeats_included(api: Api) -> None:
    rt = rt_of(api)
    dev, other = device(api), device(api)
    report(api, dev, buffer={"depth": 7, "drops": {"evicted": 2, "sampled": 3}})
    report(api, other, health={"ok": False})
    begun = time.time()
    while time.time() - begun < 2.6:
        report(api, dev, buffer={"depth": 7, "drops": {"evicted": 2, "sampled": 3}})  # heartbeats
        report(api, other, health={"ok": False})
        time.sleep(0.05)
    ended = time.time()
    rt.status_samples.flush()
    for d in (dev, other):
        ats = [r.at for r in samples(api, d.id)]
        assert len(ats) == len(set(ats)), "two samples of one period"
        periods = int(ended) - int(begun) + 1
        assert 3 <= len(ats) <= periods + 1, (len(ats), periods)
    mine = samples(api, dev.id)
    assert {(r.buffer_depth, r.buffer_drops, r.healthy) for r in mine} == {(7, 5, True)}
    assert {(r.state, r.healthy) for r in samples(api, other.id)} == {("degraded", False)}


def test_two_workers_sampling_one_device_in_one_period_store_one_sample(api: Api) -> None:
    rt = rt_of(api)
    dev = device(api)
    report(api, dev, inference={"p95_ms": 3.0})
    second = StatusSampler(rt.engine, rt.settings.status_sample_seconds)  # another worker
    rep = StatusReport.model_validate({"inference": {"p95_ms": 99.0}})
    second.record(dev.id, values_of(rep, DeviceState.ready, site_id(api, "shop-1")))
    assert rt.status_samples.flush() == 1 and second.flush() == 1
    (row,) = samples(api, dev.id)
    assert row.p95_ms == 3.0, "the first writer's sample stays"


def test_a_large_flush_writes_every_sample_in_transactions_of_a_chunk(api: Api) -> None:
    """A period's samples of a big fleet are written WRITE_BEHIND_CHUNK at a time, the
    write lock free between chunks, so a request waiting to write waits for a chunk,
    not for the whole fleet's samples; none is lost or written twice."""
    rt = rt_of(api)
    n = 2 * WRITE_BEHIND_CHUNK + 1
    values = values_of(StatusReport.model_validate({}), DeviceState.ready, 1)
    for i in range(n):
        rt.status_samples.record(f"dev-{i:05d}", values)
    transactions: list[float] = []
    event.listen(rt.engine, "commit", lambda _conn: transactions.append(time.monotonic()))
    assert rt.status_samples.flush() == n
    assert len(samples(api)) == n
    assert len(transactions) >= 3, f"{n} samples in {len(transactions)} transactions"
    assert rt.status_samples.pending() == 0


def test_retention_prunes_old_samples_and_rollups_in_small_batches(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = rt_of(api)
    step = rt.settings.status_sample_seconds
    now = datetime.now(UTC)
    dev = device(api)
    shop = site_id(api, "shop-1")
    old = [now - timedelta(days=15, seconds=i * step) for i in range(7)]
    recent = [now - timedelta(days=13, seconds=i * step) for i in range(3)]
    for at in old + recent:
        report_at(rt, dev.id, at, shop, inference={"p95_ms": 5.0})
        rt.status_samples.flush()
    assert len(samples(api, dev.id)) == 10
    sample_rollup.upkeep(rt, now=now - timedelta(days=13) + timedelta(hours=2))  # rolls up
    monkeypatch.setattr(sample_rollup, "PRUNE_BATCH", 3)
    _, pruned = sample_rollup.upkeep(rt, now=now)
    assert pruned == 7 + 7 * 2, "each old sample and its site's and the fleet's rollup"
    left = samples(api, dev.id)
    assert len(left) == 3
    assert all(aware(r.at) >= min(recent) - timedelta(seconds=step) for r in left)  # type: ignore[operator]
    with rt.engine.connect() as conn:
        oldest = conn.scalar(select(func.min(SampleRollup.__table__.c.at)))  # type: ignore[attr-defined]
    assert oldest is not None and aware(oldest) > now - timedelta(days=14)  # type: ignore[operator]


# -- status history: the series ------------------------------------------------------------


def test_fleet_and_site_status_per_bucket_from_samples_and_from_rollups_agree(api: Api) -> None:
    rt = rt_of(api)
    a1, a2, b1 = device(api, "shop-a"), device(api, "shop-a"), device(api, "shop-b")
    sa, sb = site_id(api, "shop-a"), site_id(api, "shop-b")
    step = timedelta(seconds=rt.settings.status_sample_seconds)  # one hour
    start = T0
    # Bucket 0 (first half hour): all three fine. Bucket 1: b1 unhealthy, a2 silent.
    # Bucket 2: nobody. Bucket 3: a1 alone, slow.
    report_at(rt, a1.id, start + timedelta(minutes=1), sa, inference={"p95_ms": 10.0})
    report_at(rt, a2.id, start + timedelta(minutes=2), sa, inference={"p95_ms": 20.0})
    report_at(rt, b1.id, start + timedelta(minutes=3), sb, inference={"p95_ms": 40.0})
    rt.status_samples.flush()
    rt.status_samples._sampled.clear()
    report_at(rt, a1.id, start + step + timedelta(minutes=31), sa, inference={"p95_ms": 11.0})
    report_at(rt, b1.id, start + step + timedelta(minutes=32), sb, health={"ok": False})
    rt.status_samples.flush()
    rt.status_samples._sampled.clear()
    report_at(rt, a1.id, start + 3 * step + timedelta(minutes=5), sa, inference={"p95_ms": 90.0})
    rt.status_samples.flush()
    # Hour-long periods, hour-long buckets: period k is bucket k.
    buckets = Buckets.ending(6, step, start + 5 * step)
    assert buckets.start == start

    def table(site: int | None = None) -> list[tuple[Any, ...]]:
        got = series.status_per_bucket(rt.engine, buckets, site_id=site)
        assert [p.start for p in got] == buckets.starts()
        return [(p.reporting, p.healthy, p.unhealthy, p.p95_median_ms, p.p95_max_ms) for p in got]

    fleet = [
        (3, 3, 0, 20.0, 40.0),
        (2, 1, 1, 11.0, 11.0),
        (0, 0, 0, None, None),
        (1, 1, 0, 90.0, 90.0),
        (0, 0, 0, None, None),
        (0, 0, 0, None, None),
    ]
    shop_a = [
        (2, 2, 0, 10.0, 20.0),
        (1, 1, 0, 11.0, 11.0),
        (0, 0, 0, None, None),
        (1, 1, 0, 90.0, 90.0),
        (0, 0, 0, None, None),
        (0, 0, 0, None, None),
    ]
    assert table() == fleet
    assert table(sa) == shop_a
    assert table(sb)[1] == (1, 0, 1, None, None)
    assert sample_rollup.rolled_until(rt.engine) is None
    # The rollup waits for 3 flush intervals (3 h in these tests) after a period's end.
    assert sample_rollup.upkeep(rt, now=start + 9 * step)[0] == 3, "three periods had samples"
    assert sample_rollup.rolled_until(rt.engine) == start + 3 * step
    assert table() == fleet, "the rollups say what the samples said"
    assert table(sa) == shop_a
    assert sample_rollup.upkeep(rt, now=start + 9 * step)[0] == 0, "each period once"
    # Wider buckets: each count is the highest of its periods, the median of medians.
    two_hours = Buckets.ending(3, 2 * step, start + 5 * step)
    got = series.status_per_bucket(rt.engine, two_hours)
    assert [(p.reporting, p.unhealthy, p.p95_median_ms, p.p95_max_ms) for p in got] == [
        (3, 1, 11.0, 40.0),
        (1, 0, 90.0, 90.0),
        (0, 0, None, None),
    ]


def test_one_device_over_time_worst_and_latest_per_bucket(api: Api) -> None:
    rt = rt_of(api)
    dev = device(api)
    shop = site_id(api, "shop-1")
    sampler = StatusSampler(rt.engine, 60)  # minute periods, as by default
    minute = timedelta(minutes=1)
    reports = [
        (0, {"inference": {"p95_ms": 5.0, "error_rate": 0.0}, "buffer": {"depth": 1}}),
        (1, {"inference": {"p95_ms": 9.0, "error_rate": 0.1}, "buffer": {"depth": 40}}),
        (2, {"inference": {"p95_ms": 6.0}, "buffer": {"depth": 3, "drops": {"evicted": 4}}}),
        (4, {"applied_revision": 2, "health": {"ok": False}, "buffer": {"depth": 0}}),
    ]
    for m, body in reports:
        rep = StatusReport.model_validate(body)
        state = DeviceState.ready if rep.health.ok else DeviceState.degraded
        sampler.record(dev.id, values_of(rep, state, shop), now=(T0 + m * minute).timestamp())
    sampler.flush()
    buckets = Buckets.ending(4, 3 * minute, T0 + 9 * minute)
    got = series.device_status_per_bucket(rt.engine, buckets, dev.id)
    assert [p.start for p in got] == [T0 + i * 3 * minute for i in range(4)]
    first, second = got[0], got[1]
    assert (first.samples, first.healthy, first.p95_ms, first.error_rate) == (3, True, 9.0, 0.1)
    assert (first.buffer_depth, first.buffer_drops, first.state) == (40, 4, "ready")
    assert (second.samples, second.healthy, second.state, second.applied_revision) == (
        1,
        False,
        "degraded",
        2,
    )
    assert second.p95_ms is None and second.buffer_depth == 0
    assert got[2].samples == 0 and got[2].healthy is None and got[2].buffer_depth is None
    assert series.device_status_per_bucket(rt.engine, buckets, "nobody")[0].samples == 0


# -- fleet health ----------------------------------------------------------------------------


def test_fleet_health_counts_online_degraded_and_offline_per_site(api: Api) -> None:
    api.profile("hourly", HOURLY)
    ok, bad, silent = device(api, "shop-a"), device(api, "shop-a"), device(api, "shop-a")
    slow = device(api, "shop-b", profile="hourly")
    api.token(site="shop-a", require_approval=True)
    pending = api.enrol(api.token(site="shop-a", require_approval=True)["token"])
    assert pending.status_code == 202
    report(api, ok)
    report(api, bad, health={"ok": False})
    report(api, slow)
    rt = rt_of(api)
    rt.last_seen.flush()
    now = datetime.now(UTC)
    health = series.fleet_health(rt.engine, rt.settings.device_interval_seconds, now)
    assert (health.devices, health.online, health.degraded, health.offline) == (4, 2, 1, 1)
    assert health.awaiting_approval == 1
    assert health.by_state == {"ready": 2, "degraded": 1, "enrolled": 1, "awaiting_approval": 1}
    by_name = {s.site: s for s in health.sites}
    a = by_name["shop-a"]
    assert (a.devices, a.online, a.degraded, a.offline) == (3, 1, 1, 1)
    assert a.by_state["awaiting_approval"] == 1
    assert silent.id  # enrolled, never reported: offline
    # A minute later the 1 s devices are offline; the hourly profile's device is not.
    later = series.fleet_health(rt.engine, 1, now + timedelta(minutes=1))
    assert (later.online, later.degraded, later.offline) == (1, 0, 3)
    assert by_name["shop-b"].online == 1
    gone = series.fleet_health(rt.engine, 1, now + timedelta(hours=4))
    assert gone.online == 0 and gone.offline == 4


# -- rollout progress ------------------------------------------------------------------------


def test_rollout_progress_is_the_apis_per_wave_counts(api: Api) -> None:
    api.profile("vision", {**HOURLY, "config": {"v": 1}})
    devs = [device(api, "shop-1", profile="vision") for _ in range(4)]
    for d in devs:
        report(api, d, applied_revision=1)
    api.ok(
        "POST",
        "/profiles",
        api.admin,
        json={"name": "vision", "spec": {**HOURLY, "config": {"v": 2}}, "hold": True},
    )
    body = {"profile": "vision", "waves": "1,100%", "bake_seconds": 3600, "seed": "s"}
    rid = api.ok("POST", "/rollouts", api.admin, json=body)["id"]
    engine = rt_of(api).engine
    deadline = time.monotonic() + 20
    while True:
        shown = api.ok("GET", f"/rollouts/{rid}", api.admin)
        progress = series.rollout_progress(engine, rid)
        if shown == api.ok("GET", f"/rollouts/{rid}", api.admin):  # nothing moved meanwhile
            break
        assert time.monotonic() < deadline
    assert (progress.rollout_id, progress.profile, progress.revision) == (rid, "vision", 2)
    assert progress.state == shown["state"] and progress.devices == 4
    assert progress.counts == shown["counts"]
    assert [(w.number, w.step, w.state, w.devices, w.counts) for w in progress.waves] == [
        (w["number"], w["step"], w["state"], w["devices"], w["counts"]) for w in shown["waves"]
    ]
    assert [w.devices for w in progress.waves] == [1, 3]
    assert sum(sum(w.counts.values()) for w in progress.waves) == 4
    with pytest.raises(NotFound):
        series.rollout_progress(engine, rid + 100)


def test_running_revisions_count_devices_in_service_by_profile_and_revision(api: Api) -> None:
    api.profile("vision", {**HOURLY, "config": {"v": 1}})
    api.profile("audio", {**HOURLY, "config": {"v": 1}})
    vision = [device(api, "shop-1", profile="vision") for _ in range(3)]
    audio = device(api, "shop-2", profile="audio")
    silent = device(api, "shop-2", profile="audio")
    gone = device(api, "shop-1", profile="vision")
    for d, revision in ((vision[0], 1), (vision[1], 1), (vision[2], 2), (audio, 1), (gone, 1)):
        report(api, d, applied_revision=revision)
    api.ok("POST", f"/devices/{gone.id}/decommission", api.admin)
    assert silent.id  # enrolled, never reported
    counted = [(r.profile, r.revision, r.devices) for r in series.revisions(rt_of(api).engine)]
    assert counted == [("vision", 1, 2), ("audio", None, 1), ("audio", 1, 1), ("vision", 2, 1)]


def test_period_numbers_summed_by_the_database_match_a_count_in_python(api: Api) -> None:
    """Many devices, sites and periods, some without latency: the database's counts and
    nearest-rank medians are those of Python's own count over the same samples."""
    rt = rt_of(api)
    rng = random.Random(7)
    step = timedelta(seconds=rt.settings.status_sample_seconds)
    rows = [
        {
            "device_id": f"d{n:04d}",
            "at": T0 + period * step,
            "site_id": rng.choice([1, 2, 3]),
            "state": "ready",
            "healthy": rng.random() > 0.2,
            "p95_ms": None if rng.random() < 0.1 else round(rng.uniform(1, 100), 3),
            "buffer_depth": 0,
            "buffer_drops": 0,
        }
        for period in range(3)
        for n in range(rng.randint(40, 61))  # odd and even counts
    ]
    with writing(rt.engine) as conn:
        conn.execute(DeviceSample.__table__.insert(), rows)  # type: ignore[attr-defined]

    expected = {}
    for fleet in (False, True):
        groups: dict[tuple[int, datetime], list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault((0 if fleet else r["site_id"], r["at"]), []).append(r)
        for key, members in groups.items():
            p95s = [m["p95_ms"] for m in members if m["p95_ms"] is not None]
            expected[key] = (
                len(members),
                sum(not m["healthy"] for m in members),
                percentile(p95s, 50) if p95s else None,
                max(p95s) if p95s else None,
            )
    got = {}
    with reading(rt.engine) as conn:
        for per_site in (True, False):
            for p in sample_rollup.period_numbers(conn, [], per_site=per_site):
                got[(p.site_id, p.at)] = (p.reporting, p.unhealthy, p.p95_median_ms, p.p95_max_ms)
    assert got == expected
