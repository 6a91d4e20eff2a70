"""The results insert path (``services/results.py``, ``_insert``): on PostgreSQL a binary
COPY straight into the table, with no ``ON CONFLICT``, so the stream's row lock alone
keeps keys new. What that must not change: bytes stored as sent, exactly once however
often or however concurrently a batch arrives, conflicts refused and kept aside. On
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import func, select

from edgefleet.controller.models import Result, ResultConflict, ResultStream
from edgefleet.controller.services import results
from edgefleet.wire import MAX_BATCH_RECORDS, ResultAck, ResultBatch
from tests.support.apiclient import Api
from tests.test_results_api import BOOT, EPOCH, acked, batch, device, post_gzip, rec, rows


def count(api: Api) -> int:
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(Result)).scalar_one())


def big_batch(n: int, changed: int | None = None) -> dict[str, Any]:
    """``n`` records of about 300 bytes (the runner's shape); ``changed`` gets another
    payload."""
    body = {"outputs": {"scores": [[0.91, 0.05, 0.04]]}, "model": "detector", "pad": "x" * 200}
    return batch(*(rec(i, {**body, "i": i, "v": int(i == changed) + 1}) for i in range(1, n + 1)))


def gzipped(api: Api, dev: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Posted as the agent posts a batch: gzipped (a full one outweighs a plain body)."""
    r = post_gzip(api, dev, json.dumps(body).encode())
    assert r.status_code == 200, r.text
    return r.json()


def test_a_retried_batch_of_the_most_records_is_stored_once(api: Api) -> None:
    dev = device(api)
    first = big_batch(MAX_BATCH_RECORDS)
    n = MAX_BATCH_RECORDS
    assert gzipped(api, dev, first) == {
        "epoch": EPOCH,
        "acked": n,
        "stored": n,
        "duplicates": 0,
        "refused": [],
    }
    again = gzipped(api, dev, first)
    assert (again["stored"], again["duplicates"], again["refused"]) == (0, n, [])
    assert count(api) == n
    # One record of the resend carries another payload: refused and kept, the rest
    # are duplicates, the stored one is unchanged.
    changed = gzipped(api, dev, big_batch(n, changed=4321))
    assert (changed["stored"], changed["duplicates"], changed["refused"]) == (0, n - 1, [4321])
    [conflict] = rows(api, ResultConflict)
    assert json.loads(conflict.payload)["v"] == 2
    kept = [r for r in rows(api, Result) if r.seq == 4321]
    assert [json.loads(r.payload)["v"] for r in kept] == [1]
    assert count(api) == n


def test_payload_bytes_and_fields_are_stored_exactly_as_sent(api: Api) -> None:
    dev = device(api)
    # Raw tabs, newlines and carriage returns are JSON whitespace; backslashes, quotes
    # and escapes (\\t, \\n, \\u0000 as text) inside strings; characters beyond ASCII
    # and beyond the BMP; all of it must come back byte for byte.
    tricky = [
        '{\t"a":\n"tab\\there",\r\n"b": "back\\\\slash \\\\N \\\\. \\u0000 end"}',
        '["\\"quoted\\"", "é漢字 😀", "\\\\\\\\", "\\r\\n", "\\\\x00", "\\b\\f"]',
        " \n\t 42 \n",
        '"\\\\.\\n\\\\N"',
        '{"copy": "\\\\.\\n", "null": null, "deep": [[[[{"x": [1.5e-300, -0.0]}]]]]}',
    ]
    records = [rec(i + 1, payload=text) for i, text in enumerate(tricky)]
    records.append(rec(len(tricky) + 1, encoding="base64", payload="AAEC/f7/CQoNXA=="))
    records.append(rec(len(tricky) + 2, slot=None, revision=None, digest=""))
    records.append(rec(len(tricky) + 3, boot_id="boot\twith\\odd\nbytes é", mono=12.5, payload="1"))
    answer = acked(api, dev, batch(*records, boot_id=BOOT))
    assert answer["stored"] == len(records)
    stored = {r.seq: r for r in rows(api, Result)}
    for record in records:
        row = stored[record["seq"]]
        assert row.payload == record["payload"]
        assert row.encoding == record.get("encoding", "json")
        assert (row.slot, row.revision, row.digest) == (
            record["slot"],
            record["revision"],
            record["digest"],
        )
        assert row.boot_id == record.get("boot_id", "")
        assert row.device_time == record["wall"]
        assert row.corrected is False
        assert (row.device_id, row.epoch) == (dev.id, EPOCH)
    # Sent again, every one is the same payload: a duplicate, not a conflict.
    again = acked(api, dev, batch(*records, boot_id=BOOT))
    assert (again["stored"], again["duplicates"], again["refused"]) == (0, len(records), [])


def race(rt: Any, device_id: str, body: ResultBatch) -> list[ResultAck]:
    """``body`` stored by two threads released at the same moment."""
    answers: list[ResultAck] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def upload() -> None:
        start.wait()
        try:
            answers.append(results.store(rt, device_id, body))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return answers


def test_the_same_batch_uploaded_twice_at_once_is_stored_once(api: Api) -> None:
    """A retry racing the original: the second upload waits for the first's row lock on
    the stream, then finds every key held (on PostgreSQL nothing else stops a second
    copy of a key but the unique constraint, which would fail the upload)."""
    dev = device(api)
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    for attempt in range(3):
        body = ResultBatch.model_validate({**big_batch(1000), "epoch": f"{attempt + 1:016x}"})
        answers = race(rt, dev.id, body)
        assert sorted((a.stored, a.duplicates) for a in answers) == [(0, 1000), (1000, 0)]
    streams = rows(api, ResultStream)
    assert [(s.stored, s.duplicates) for s in streams] == [(1000, 1000)] * 3
    assert count(api) == 3000
