"""Result upload: a device's buffer sends batches, the controller stores each key
(device, epoch, seq) once and answers with the remote ack (DESIGN.md "Offline
buffer"); operators list results by device and time; /metrics shows the counters and
each device's buffer as its status reports it. On SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select

from edgefleet.controller.models import ResultConflict, ResultGap, ResultStream
from edgefleet.wire import MAX_BATCH_BYTES
from tests.support.apiclient import Api, TestDevice

EPOCH = "00000000000000e1"
OTHER_EPOCH = "00000000000000e2"
BOOT = "4d2c8a1e-boot-now"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
"""Records without a boot id keep their wall clock: these tests date them from here."""


def rec(seq: int, value: Any = None, *, at: float | None = None, **kw: Any) -> dict[str, Any]:
    """A record dated ``at`` minutes after T0 by its wall clock (no boot: uncorrected)."""
    wall = (T0 + timedelta(minutes=seq if at is None else at)).timestamp()
    body = {
        "seq": seq,
        "wall": wall,
        "mono": 0.0,
        "digest": "sha256:" + "ab" * 32,
        "slot": "A",
        "revision": 3,
        "payload": json.dumps({"n": seq} if value is None else value),
    }
    return {**body, **kw}


def batch(*records: dict[str, Any], epoch: str = EPOCH, **kw: Any) -> dict[str, Any]:
    return {"epoch": epoch, "wall": time.time(), "mono": 5000.0, "records": list(records), **kw}


def skip(first: int, last: int, reason: str = "evicted") -> dict[str, Any]:
    return {"first": first, "last": last, "reason": reason}


def post(api: Api, dev: TestDevice, body: Any, device_id: str | None = None, **kw: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return api.call(
        "POST",
        f"/devices/{device_id or dev.id}/results",
        dev.access_token,
        content=raw,
        headers=headers,
        **kw,
    )


def post_gzip(api: Api, dev: TestDevice, raw: bytes) -> Any:
    return post(api, dev, gzip.compress(raw), headers={"content-encoding": "gzip"})


def acked(api: Api, dev: TestDevice, body: Any) -> dict[str, Any]:
    r = post(api, dev, body)
    assert r.status_code == 200, r.text
    return r.json()


def listed(api: Api, token: str | None = None, **params: Any) -> dict[str, Any]:
    return api.ok("GET", "/results", token or api.admin, params=params)


def seqs(api: Api, **params: Any) -> list[int]:
    return [r["seq"] for r in listed(api, limit=1000, **params)["results"]]


def refused(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


def device(api: Api, site: str = "shop-1") -> TestDevice:
    if not any(s["name"] == site for s in api.ok("GET", "/sites", api.admin)):
        api.site(site)
    return api.device(api.token(site=site)["token"])


def rows(api: Api, table: Any) -> list[Any]:
    with Session(api.client.app.state.rt.engine) as s:  # type: ignore[attr-defined]
        return list(s.exec(select(table)).all())


def metrics(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = api.client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(api: Api, name: str, **labels: str) -> float | None:
    return metrics(api).get((name, tuple(sorted(labels.items()))))


# -- storing and acking ---------------------------------------------------------------


def test_a_batch_is_stored_once_and_acked_however_often_it_is_sent(api: Api) -> None:
    dev = device(api)
    first = batch(rec(1), rec(2, {"label": "cat", "score": 0.93}), rec(3))
    assert acked(api, dev, first) == {
        "epoch": EPOCH,
        "acked": 3,
        "stored": 3,
        "duplicates": 0,
        "refused": [],
    }
    shown = listed(api)["results"]
    assert [r["seq"] for r in shown] == [1, 2, 3]
    two = shown[1]
    assert two["payload"] == {"label": "cat", "score": 0.93}
    assert (two["device"], two["site"], two["epoch"]) == (dev.id, "shop-1", EPOCH)
    assert (two["slot"], two["revision"], two["digest"]) == ("A", 3, "sha256:" + "ab" * 32)
    assert two["encoding"] == "json"

    # The answer was lost: the uploader sends the same batch again.
    again = acked(api, dev, first)
    assert again == {"epoch": EPOCH, "acked": 3, "stored": 0, "duplicates": 3, "refused": []}
    # The next batch overlaps what the controller has (a resend plus new records).
    overlap = acked(api, dev, batch(rec(2, {"label": "cat", "score": 0.93}), rec(3), rec(4)))
    assert overlap == {"epoch": EPOCH, "acked": 4, "stored": 1, "duplicates": 2, "refused": []}
    assert seqs(api) == [1, 2, 3, 4]

    # A new buffer file (its storage was wiped) is a new epoch, acked from its start.
    assert acked(api, dev, batch(rec(1), epoch=OTHER_EPOCH))["acked"] == 1
    assert len(listed(api)["results"]) == 5

    assert metric(api, "edgefleet_results_stored_total") == 5
    assert metric(api, "edgefleet_results_duplicates_total") == 5
    assert metric(api, "edgefleet_results_refused_total") == 0
    streams = {s.epoch: s for s in rows(api, ResultStream)}
    assert (streams[EPOCH].acked, streams[EPOCH].stored, streams[EPOCH].duplicates) == (4, 4, 5)


def test_the_same_key_with_another_payload_is_refused_kept_aside_and_acked(api: Api) -> None:
    dev = device(api)
    acked(api, dev, batch(rec(1, {"count": 1}), rec(2, {"count": 2})))
    answer = acked(api, dev, batch(rec(1, {"count": 1}), rec(2, {"count": 99}), rec(3)))
    assert answer == {"epoch": EPOCH, "acked": 3, "stored": 1, "duplicates": 1, "refused": [2]}
    # The stored result is the first one; the other is kept for an operator to look at.
    assert [r["payload"] for r in listed(api)["results"]] == [{"count": 1}, {"count": 2}, {"n": 3}]
    [conflict] = rows(api, ResultConflict)
    assert (conflict.device_id, conflict.epoch, conflict.seq) == (dev.id, EPOCH, 2)
    assert json.loads(conflict.payload) == {"count": 99}
    # The same bytes in another encoding are another payload too.
    b64 = acked(api, dev, batch(rec(3, encoding="base64", payload="eyJuIjogM30=")))
    assert b64["refused"] == [3]
    assert metric(api, "edgefleet_results_refused_total") == 2
    assert metric(api, "edgefleet_results_stored_total") == 3
    assert [s.refused for s in rows(api, ResultStream)] == [2]


def test_skipped_ranges_move_the_ack_and_a_hole_stores_nothing(api: Api) -> None:
    dev = device(api)
    answer = acked(
        api, dev, batch(rec(3), rec(4), rec(8), skipped=[skip(1, 2, "sampled"), skip(5, 7)])
    )
    assert (answer["acked"], answer["stored"]) == (8, 3)
    # Only skipped sequences: the ack still moves.
    assert acked(api, dev, batch(skipped=[skip(9, 12)]))["acked"] == 12
    # A range partly behind the ack counts only what is new (13-15).
    assert acked(api, dev, batch(skipped=[skip(10, 15, "acked")]))["acked"] == 15
    gaps = sorted((g.first, g.last, g.reason) for g in rows(api, ResultGap))
    assert gaps == [(1, 2, "sampled"), (5, 7, "evicted"), (9, 12, "evicted"), (13, 15, "acked")]
    assert metric(api, "edgefleet_results_skipped_total", reason="evicted") == 7
    assert metric(api, "edgefleet_results_skipped_total", reason="sampled") == 2
    assert metric(api, "edgefleet_results_skipped_total", reason="acked") == 3
    assert [s.skipped for s in rows(api, ResultStream)] == [12]

    # 17 is neither sent nor declared skipped: refused whole, nothing stored.
    hole = post(api, dev, batch(rec(16), rec(18), rec(19)))
    assert "17-17" in refused(hole, 400, "results_gap")
    hole = post(api, dev, batch(rec(16), skipped=[skip(20, 21)]))
    assert "17-19" in refused(hole, 400, "results_gap")
    # A skipped range must not claim a sequence the batch also sends.
    overlap = post(api, dev, batch(rec(16), rec(17), skipped=[skip(17, 18)]))
    refused(overlap, 400, "results_overlap")
    assert seqs(api) == [3, 4, 8]
    assert acked(api, dev, batch(rec(16)))["acked"] == 16


def test_records_out_of_order_or_twice_are_refused(api: Api) -> None:
    dev = device(api)
    message = refused(post(api, dev, batch(rec(2), rec(1))), 400, "results_out_of_order")
    assert "result 1 follows 2" in message
    refused(post(api, dev, batch(rec(1), rec(1))), 400, "results_out_of_order")
    assert seqs(api) == []
    assert acked(api, dev, batch(rec(1)))["acked"] == 1


def test_a_batch_beyond_the_ack_stores_nothing_and_says_where_to_resume(api: Api) -> None:
    dev = device(api)
    acked(api, dev, batch(rec(1), rec(2)))
    # E.g. the controller's database was restored: it no longer has 3-9.
    ahead = acked(api, dev, batch(rec(10), rec(11)))
    assert ahead == {"epoch": EPOCH, "acked": 2, "stored": 0, "duplicates": 0, "refused": []}
    assert seqs(api) == [1, 2]
    # The device then declares what it already deleted, and goes on.
    answer = acked(api, dev, batch(rec(10), rec(11), skipped=[skip(3, 9, "acked")]))
    assert (answer["acked"], answer["stored"]) == (11, 2)
    # A first batch of a new epoch that does not start at 1 is told 0.
    assert acked(api, dev, batch(rec(5), epoch=OTHER_EPOCH))["acked"] == 0


# -- the body: gzip, sizes, validation ------------------------------------------------


def test_a_gzipped_batch_is_stored_and_batches_may_outweigh_other_bodies(api: Api) -> None:
    dev = device(api)
    raw = json.dumps(batch(*(rec(i) for i in range(1, 201)))).encode()
    r = post_gzip(api, dev, raw)
    assert r.status_code == 200, r.text
    assert (r.json()["acked"], r.json()["stored"]) == (200, 200)
    # Binary results, base64, well over the 64 KiB limit of other request bodies.
    blob = "QUJD" * 40 + "QQ=="
    body = batch(*(rec(i, encoding="base64", payload=blob) for i in range(201, 1201)))
    big = json.dumps(body).encode()
    assert len(big) > 64 * 1024 * 3
    plain = post(api, dev, big)
    assert plain.status_code == 200, plain.text
    assert plain.json()["acked"] == 1200
    assert listed(api, newest="true", limit=1)["results"][0]["payload"] == blob


def test_an_unpacked_batch_may_weigh_4_mib_and_no_more(api: Api) -> None:
    dev = device(api)

    def padded(size: int) -> bytes:
        head = json.dumps(batch(rec(1)))[:-1].encode()
        return head + b" " * (size - len(head) - 1) + b"}"

    bomb = post_gzip(api, dev, padded(16 * MAX_BATCH_BYTES))  # 64 MiB unpacked, 64 KiB sent
    message = refused(bomb, 413, "payload_too_large")
    assert str(MAX_BATCH_BYTES) in message
    refused(post_gzip(api, dev, padded(MAX_BATCH_BYTES + 1)), 413, "payload_too_large")
    assert seqs(api) == []
    exactly = post_gzip(api, dev, padded(MAX_BATCH_BYTES))
    assert exactly.status_code == 200, exactly.text
    assert exactly.json()["stored"] == 1


def test_bad_bodies_are_refused_clearly_and_nothing_is_stored(api: Api) -> None:
    dev = device(api)
    good = json.dumps(batch(rec(1), rec(2))).encode()
    gz = {"content-encoding": "gzip"}

    message = refused(post(api, dev, b"this is not gzip", headers=gz), 400, "bad_encoding")
    assert "not valid gzip" in message
    cut = post(api, dev, gzip.compress(good)[:-12], headers=gz)
    assert "cut short" in refused(cut, 400, "bad_encoding")
    trailing = post(api, dev, gzip.compress(good) + b"junk", headers=gz)
    assert "follow the gzip stream" in refused(trailing, 400, "bad_encoding")
    br = post(api, dev, good, headers={"content-encoding": "br"})
    assert "gzip" in refused(br, 400, "bad_encoding")

    assert "not valid" in refused(post(api, dev, b"{records: [}"), 400, "invalid_results")
    bad_epoch = post(api, dev, batch(rec(1), epoch="not-hex"))
    assert "epoch" in refused(bad_epoch, 400, "invalid_results")
    backwards = post(api, dev, batch(rec(1), skipped=[skip(5, 3)]))
    assert "ends before it starts" in refused(backwards, 400, "invalid_results")

    # A record whose payload is not what its encoding says poisons the whole batch.
    for payload, encoding in [
        ("{'label': 'cat'}", "json"),
        ("", "json"),
        ("NaN", "json"),  # not JSON, and no listing could return it
        ('{"score": Infinity}', "json"),
        ("[" * 100_000 + "]" * 100_000, "json"),  # deeper than any parser should follow
        ("not base64!", "base64"),
    ]:
        r = post(api, dev, batch(rec(1), rec(2, encoding=encoding, payload=payload)))
        message = refused(r, 400, "invalid_payload")
        assert f"result 2: the payload is not valid {encoding}" in message, message
        assert "nothing of this batch was stored" in message

    # Clocks no date can hold.
    for wrong in [{"wall": 1e300}, {"wall": -1e12}, {"mono": 1e300}]:
        r = post(api, dev, batch(rec(1), rec(2, **wrong)))
        assert "result 2: its clocks" in refused(r, 400, "invalid_clock")
    r = post(api, dev, batch(rec(1), mono=1e300, boot_id=BOOT))
    assert "monotonic clock" in refused(r, 400, "invalid_clock")

    assert seqs(api) == []
    assert rows(api, ResultConflict) == []
    assert acked(api, dev, good)["acked"] == 2


def test_a_device_posts_only_its_own_results(api: Api) -> None:
    dev, other = device(api), device(api)
    r = post(api, dev, batch(rec(1)), device_id=other.id)
    refused(r, 403, "other_device")
    # An operator is not a device.
    r = api.call("POST", f"/devices/{dev.id}/results", api.admin, json=batch(rec(1)))
    assert r.status_code == 401, r.text
    assert api.call("POST", f"/devices/{dev.id}/results", json=batch(rec(1))).status_code == 401
    assert seqs(api) == []


# -- time -----------------------------------------------------------------------------


def test_results_are_dated_by_the_controller_clock_when_their_boot_is_known(api: Api) -> None:
    dev = device(api)
    years_off = time.time() - 6 * 365 * 86400  # an RTC without a battery, say
    before = datetime.now(UTC)
    answer = acked(
        api,
        dev,
        batch(
            rec(1, wall=years_off - 60, mono=9940.0, boot_id=BOOT),
            rec(2, wall=years_off - 10, mono=9990.0, boot_id=BOOT),
            # Still in the buffer from an earlier boot the controller never heard from.
            rec(3, wall=T0.timestamp(), mono=50.0, boot_id="boot-before"),
            rec(4, wall=T0.timestamp() + 1, mono=0.0),
            wall=years_off,
            mono=10000.0,
            boot_id=BOOT,
        ),
    )
    after = datetime.now(UTC)
    assert answer["stored"] == 4
    one, two, three, four = sorted(listed(api)["results"], key=lambda r: r["seq"])
    for result, ago in [(one, 60), (two, 10)]:
        when = datetime.fromisoformat(result["time"])
        assert before - timedelta(seconds=ago + 1) <= when <= after - timedelta(seconds=ago - 1)
        assert result["corrected"] is True
        assert result["boot_id"] == BOOT
    device_time = datetime.fromisoformat(two["device_time"]).timestamp()
    assert device_time == pytest.approx(years_off - 10, abs=0.001)
    for result, wall in [(three, T0), (four, T0 + timedelta(seconds=1))]:
        assert datetime.fromisoformat(result["time"]) == wall
        assert result["corrected"] is False

    # After a reboot, a result of the earlier boot is still dated by that boot's start.
    acked(
        api,
        dev,
        batch(rec(5, wall=years_off + 5, mono=10005.0, boot_id=BOOT), boot_id="boot-next", mono=30),
    )
    [five] = [r for r in listed(api)["results"] if r["seq"] == 5]
    assert five["corrected"] is True
    when = datetime.fromisoformat(five["time"])
    assert before - timedelta(seconds=1) <= when - timedelta(seconds=5)
    assert when <= datetime.now(UTC) + timedelta(seconds=6)


# -- listing --------------------------------------------------------------------------


def test_results_are_listed_by_device_and_time_range(api: Api) -> None:
    dev, other = device(api), device(api, "shop-2")
    acked(api, dev, batch(*(rec(i, at=10 * i) for i in range(1, 6))))  # T0+10 ... T0+50 min
    acked(api, other, batch(rec(1, at=25), rec(2, at=35)))

    assert seqs(api, device=dev.id) == [1, 2, 3, 4, 5]
    assert [(r["device"], r["site"]) for r in listed(api, device=other.id)["results"]] == [
        (other.id, "shop-2"),
        (other.id, "shop-2"),
    ]
    everything = listed(api)["results"]
    assert [(r["device"] == dev.id, r["seq"]) for r in everything] == [
        (True, 1),
        (True, 2),
        (False, 1),
        (True, 3),
        (False, 2),
        (True, 4),
        (True, 5),
    ]
    # [since, until): since included, until not; any offset means the same instant.
    since, until = T0 + timedelta(minutes=20), T0 + timedelta(minutes=40)
    assert seqs(api, device=dev.id, since=since.isoformat(), until=until.isoformat()) == [2, 3]
    in_paris = since.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert seqs(api, device=dev.id, since=in_paris, until=until.isoformat()) == [2, 3]
    assert seqs(api, since=since.isoformat(), until=until.isoformat()) == [2, 1, 3, 2]
    assert seqs(api, since=(T0 + timedelta(minutes=45)).isoformat()) == [5]

    r = api.call("GET", "/results", api.admin, params={"since": "2030-01-01T00:00:00"})
    assert "time zone" in refused(r, 400, "bad_range")
    r = api.call(
        "GET",
        "/results",
        api.admin,
        params={"since": until.isoformat(), "until": since.isoformat()},
    )
    refused(r, 400, "bad_range")
    refused(api.call("GET", "/results", api.admin, params={"order": "size"}), 400, "bad_order")
    refused(api.call("GET", "/results", api.admin, params={"after": "x|y"}), 400, "bad_cursor")
    r = api.call("GET", "/results", api.admin, params={"device": "no-such-device"})
    refused(r, 404, "unknown_device")


def _pages(api: Api, **params: Any) -> list[list[tuple[str, int]]]:
    pages = []
    after = None
    while True:
        page = listed(api, **params, **({"after": after} if after else {}))
        pages.append([(r["epoch"], r["seq"]) for r in page["results"]])
        after = page["next"]
        if after is None:
            return pages
        assert len(pages) < 10


def test_pages_follow_time_or_arrival_order_forwards_and_from_the_newest(api: Api) -> None:
    dev = device(api)
    # Arrival order differs from time order; 2 and 3 happened at the same instant.
    acked(api, dev, batch(rec(1, at=50), rec(2, at=60), rec(3, at=60), rec(4, at=70)))
    acked(api, dev, batch(rec(1, at=5), rec(2, at=15), rec(3, at=25), epoch=OTHER_EPOCH))
    a, b = EPOCH, OTHER_EPOCH
    by_time = [(b, 1), (b, 2), (b, 3), (a, 1), (a, 2), (a, 3), (a, 4)]
    by_arrival = [(a, 1), (a, 2), (a, 3), (a, 4), (b, 1), (b, 2), (b, 3)]

    assert _pages(api, limit=2) == [by_time[0:2], by_time[2:4], by_time[4:6], by_time[6:]]
    # A page boundary between two results of the same instant loses neither.
    assert _pages(api, limit=5) == [by_time[:5], by_time[5:]]
    assert _pages(api, order="arrival", limit=3) == [
        by_arrival[0:3],
        by_arrival[3:6],
        by_arrival[6:],
    ]
    # newest=true: the last page first (each oldest first), then ever older ones.
    assert _pages(api, newest="true", limit=3) == [by_time[4:], by_time[1:4], by_time[:1]]
    assert _pages(api, newest="true", order="arrival", limit=4) == [by_arrival[3:], by_arrival[:3]]
    assert _pages(api, newest="true", limit=7) == [by_time, []]
    # Following new results: the last cursor of an arrival listing yields what came since.
    tail = listed(api, order="arrival", limit=7)
    assert listed(api, order="arrival", after=tail["next"])["results"] == []
    acked(api, dev, batch(rec(5, at=1), epoch=EPOCH))
    newer = listed(api, order="arrival", after=tail["next"])["results"]
    assert [(r["epoch"], r["seq"]) for r in newer] == [(a, 5)]
    # Cursors stay within the time range they were made with.
    window = {"since": (T0 + timedelta(minutes=10)).isoformat()}
    assert _pages(api, limit=4, **window) == [by_time[1:5], by_time[5:]]


def test_viewers_read_results_and_installers_do_not(api: Api) -> None:
    dev = device(api)
    acked(api, dev, batch(rec(1)))
    viewer = api.user("vera", "viewer")
    assert [r["seq"] for r in listed(api, viewer)["results"]] == [1]
    installer = api.user("ian", "installer", site="shop-1")
    refused(api.call("GET", "/results", installer), 403, "role")
    assert api.call("GET", "/results").status_code == 401
    assert api.call("GET", "/results", dev.access_token).status_code == 401


# -- metrics --------------------------------------------------------------------------


def test_metrics_show_each_device_s_buffer_from_its_status(api: Api) -> None:
    dev, quiet = device(api), device(api)
    status = {
        "buffer": {
            "depth": 1200,
            "bytes": 480_000,
            "oldest_age_seconds": 300.0,
            "drops": {"evicted": 7, "sampled": 2},
            "cap_bytes": 64 * 1024 * 1024,
            "capacity_hours": 30.5,
        }
    }
    r = api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=status)
    assert r.status_code == 200, r.text
    seen = time.time()
    m = metrics(api)
    assert m[("edgefleet_buffer_depth", (("device", dev.id),))] == 1200
    lag = m[("edgefleet_results_lag_seconds", (("device", dev.id),))]
    assert 300 <= lag <= 300 + (time.time() - seen) + 2
    drops = ("edgefleet_buffer_drops", (("device", dev.id), ("reason", "evicted")))
    assert m[drops] == 7
    assert m[("edgefleet_buffer_drops", (("device", dev.id), ("reason", "sampled")))] == 2
    # A device that never reported a buffer shows an empty one.
    assert m[("edgefleet_buffer_depth", (("device", quiet.id),))] == 0
    assert m[("edgefleet_results_lag_seconds", (("device", quiet.id),))] == 0

    # Once it has sent everything, its lag is 0 whatever the age it last reported.
    status["buffer"] = {**status["buffer"], "depth": 0}
    r = api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=status)
    assert r.status_code == 200, r.text
    assert metric(api, "edgefleet_results_lag_seconds", device=dev.id) == 0
    assert metric(api, "edgefleet_buffer_depth", device=dev.id) == 0
