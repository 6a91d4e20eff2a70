"""Inference results: each device's buffer uploads them in batches; each key
(device, epoch, seq) is stored once, and the answer is the remote ack.

A batch covers every sequence from its first to its last, either as a record or
inside a declared skipped range. The stream's ``acked`` only moves forward, to the end
of a batch that starts at or before ``acked + 1``; a batch that starts later stores
nothing and is answered with the current ack, which tells a device whose records the
controller lost (a restored database) where to declare a gap from.

Timestamps: a batch carries the device's clocks as it was sent, so the controller
learns when that boot began by its own clock; a result of a known boot is dated by
its monotonic time from that start (``corrected``), whatever the device's wall clock
said. Results of a boot the controller never heard from keep the device's wall clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from edgefleet.controller.db import reading, writing
from edgefleet.controller.models import (
    Device,
    DeviceBoot,
    Result,
    ResultConflict,
    ResultGap,
    ResultStream,
    Site,
    aware,
)
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.runtime import Runtime
from edgefleet.errors import BadRequest, NotFound
from edgefleet.wire import PayloadEncoding, ResultAck, ResultBatch, ResultRecord

MAX_LIST = 1000
ORDERS = ("time", "arrival")


@dataclass(frozen=True)
class Span:
    """The sequences a batch covers: ``first``..``last``; (0, -1) when it covers none."""

    first: int
    last: int


def span_of(batch: ResultBatch) -> Span:
    """Checks that records ascend and, with the skipped ranges, leave no hole."""
    previous = 0
    for record in batch.records:
        if record.seq <= previous:
            raise BadRequest(
                f"result {record.seq} follows {previous}: records must be in ascending "
                "sequence order, each once",
                code="results_out_of_order",
            )
        previous = record.seq
    pieces = sorted(
        [(r.seq, r.seq) for r in batch.records] + [(g.first, g.last) for g in batch.skipped]
    )
    if not pieces:
        return Span(0, -1)
    first, end = pieces[0][0], pieces[0][1]
    for lo, hi in pieces[1:]:
        if lo > end + 1:
            raise BadRequest(
                f"the batch has no record and no skipped range for sequences {end + 1}-{lo - 1}",
                code="results_gap",
            )
        if lo <= end:
            # A record inside a skipped range, or two ranges over one sequence: the
            # batch contradicts itself (and would count a sequence twice).
            raise BadRequest(
                f"sequence {lo} is covered twice (by a record and a skipped range, or by "
                "two skipped ranges)",
                code="results_overlap",
            )
        end = hi
    return Span(first, end)


MAX_WALL = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
MAX_MONO = 100 * 366 * 86400.0
"""A monotonic clock (time since boot) beyond a century is a broken one."""


def _check_clocks(batch: ResultBatch, now: float) -> None:
    """Clocks every date can be made of: wall clocks between 1970 and 9999, a boot
    that began after 1970 and lasted under a century. Else one record's date would
    fail every listing (or this upload) for good."""
    if batch.mono > min(now, MAX_MONO):
        raise BadRequest(
            f"the batch's monotonic clock ({batch.mono} s since boot) is not a time; "
            "nothing of this batch was stored",
            code="invalid_clock",
        )
    for r in batch.records:
        if r.mono > MAX_MONO or not 0 <= r.wall <= MAX_WALL:
            raise BadRequest(
                f"result {r.seq}: its clocks (wall {r.wall}, mono {r.mono}) are not a time; "
                "nothing of this batch was stored",
                code="invalid_clock",
            )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


MAX_PAYLOAD_DEPTH = 64
"""Nested arrays and objects in a JSON payload. Deeper ones parse, but the listing of
results encodes its answer by recursion: one such record would fail every listing that
includes it (a 500), so the batch is refused instead."""


def _check_payloads(records: list[ResultRecord]) -> None:
    """Every JSON payload parses, as one array first (one call for the batch); only
    when that fails is each parsed alone, to name the bad one."""
    as_json = [r for r in records if r.encoding is PayloadEncoding.json]
    texts = [r.payload for r in as_json]
    try:
        parsed = json.loads(f"[{','.join(texts)}]", parse_constant=_no_constant)
        if len(parsed) == len(texts):
            for record, value in zip(as_json, parsed, strict=True):
                _check_depth(record, value)
            texts = []
    except (ValueError, RecursionError):
        pass
    for record in records:
        if record.encoding is PayloadEncoding.json and not texts:
            continue
        try:
            if record.encoding is PayloadEncoding.json:
                # NaN and Infinity: Python reads them, but no JSON answer may carry them.
                _check_depth(record, json.loads(record.payload, parse_constant=_no_constant))
            else:
                base64.b64decode(record.payload, validate=True)
        except (ValueError, binascii.Error, RecursionError) as exc:
            if isinstance(exc, RecursionError):
                exc = ValueError("nested too deeply")
            raise _invalid(record, str(exc)) from exc


def _check_depth(record: ResultRecord, value: Any) -> None:
    """Counting brackets first (C speed) spares the walk for every payload but the few
    with more than ``MAX_PAYLOAD_DEPTH`` of them."""
    text = record.payload
    if text.count("[") + text.count("{") <= MAX_PAYLOAD_DEPTH:
        return
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_PAYLOAD_DEPTH:
                raise _invalid(record, f"nested more than {MAX_PAYLOAD_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _invalid(record: ResultRecord, why: str) -> BadRequest:
    return BadRequest(
        f"result {record.seq}: the payload is not valid {record.encoding.value} "
        f"({why}); nothing of this batch was stored",
        code="invalid_payload",
    )


def store(rt: Runtime, device_id: str, batch: ResultBatch) -> ResultAck:
    """Store what is new, set aside what conflicts, move the ack; one transaction."""
    span = span_of(batch)
    _check_payloads(batch.records)
    now = time.time()
    _check_clocks(batch, now)
    received = datetime.fromtimestamp(now, UTC)
    with writing(rt.engine) as conn:
        acked = _lock_stream(conn, device_id, batch.epoch, received)
        boots = _learn_boot(conn, device_id, batch, now, received)
        if span.last < 0 or span.first > acked + 1:
            return ResultAck(epoch=batch.epoch, acked=acked)
        held = _held(conn, device_id, batch.epoch, batch.records)
        new = [r for r in batch.records if r.seq not in held]
        _insert(conn, device_id, batch.epoch, new, boots, received)
        again = [r for r in batch.records if r.seq in held]
        refused = _refuse_conflicts(conn, device_id, batch.epoch, again, held, received)
        gaps = [
            {
                "device_id": device_id,
                "epoch": batch.epoch,
                "first": max(g.first, acked + 1),
                "last": g.last,
                "reason": g.reason,
                "received_at": received,
            }
            for g in batch.skipped
            if g.last > acked
        ]
        if gaps:
            conn.execute(ResultGap.__table__.insert(), gaps)  # type: ignore[attr-defined]
        new_ack = max(acked, span.last)
        conn.execute(
            update(ResultStream)
            .where(ResultStream.device_id == device_id, ResultStream.epoch == batch.epoch)  # type: ignore[arg-type]
            .values(
                acked=new_ack,
                stored=ResultStream.stored + len(new),
                duplicates=ResultStream.duplicates + len(again) - len(refused),
                refused=ResultStream.refused + len(refused),
                skipped=ResultStream.skipped + sum(g["last"] - g["first"] + 1 for g in gaps),
                updated_at=received,
            )
        )
    rt.metrics.results_stored.inc(len(new))
    rt.metrics.results_duplicates.inc(len(again) - len(refused))
    rt.metrics.results_refused.inc(len(refused))
    for gap in gaps:
        rt.metrics.results_skipped.labels(reason=gap["reason"]).inc(gap["last"] - gap["first"] + 1)
    return ResultAck(
        epoch=batch.epoch,
        acked=new_ack,
        stored=len(new),
        duplicates=len(again) - len(refused),
        refused=refused,
    )


def _insert_stmt(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _lock_stream(conn: Connection, device_id: str, epoch: str, now: datetime) -> int:
    """The stream's ack, its row locked until commit (two uploads of one device queue)."""
    conn.execute(
        _insert_stmt(conn, ResultStream.__table__)  # type: ignore[attr-defined]
        .values(
            device_id=device_id,
            epoch=epoch,
            acked=0,
            stored=0,
            duplicates=0,
            refused=0,
            skipped=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    return int(
        conn.execute(
            select(ResultStream.acked)
            .where(ResultStream.device_id == device_id, ResultStream.epoch == epoch)  # type: ignore[arg-type]
            .with_for_update()
        ).scalar_one()
    )


def _learn_boot(
    conn: Connection, device_id: str, batch: ResultBatch, now: float, received: datetime
) -> dict[str, float]:
    """When each boot in the batch began (controller clock), learning the sender's own."""
    if batch.boot_id:
        started = now - batch.mono
        conn.execute(
            _insert_stmt(conn, DeviceBoot.__table__)  # type: ignore[attr-defined]
            .values(device_id=device_id, boot_id=batch.boot_id, started=started, seen_at=received)
            .on_conflict_do_update(
                index_elements=["device_id", "boot_id"],
                set_={"started": started, "seen_at": received},
            )
        )
    wanted = {r.boot_id for r in batch.records if r.boot_id}
    if not wanted:
        return {}
    rows = conn.execute(
        select(DeviceBoot.boot_id, DeviceBoot.started).where(
            DeviceBoot.device_id == device_id,
            DeviceBoot.boot_id.in_(wanted),  # type: ignore[attr-defined]
        )
    )
    return {boot: started for boot, started in rows}


def _held(
    conn: Connection, device_id: str, epoch: str, records: list[ResultRecord]
) -> dict[int, tuple[str, str]]:
    """Of the batch's keys, those already stored, with their encoding and payload: one
    range scan of the key's index (nothing, unless the batch is sent again)."""
    if not records:
        return {}
    wanted = {r.seq for r in records}
    rows = conn.execute(
        select(Result.seq, Result.encoding, Result.payload).where(
            Result.device_id == device_id,
            Result.epoch == epoch,
            Result.seq.between(records[0].seq, records[-1].seq),  # type: ignore[attr-defined]
        )
    )
    return {seq: (enc, payload) for seq, enc, payload in rows if seq in wanted}


_COLUMNS = (
    "device_id, epoch, seq, time, device_time, corrected, boot_id, digest, slot, revision, "
    "encoding, payload, received_at"
)
_COPY = f"COPY result ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = (
    "varchar", "varchar", "int8", "timestamptz", "float8", "bool", "varchar", "varchar",
    "varchar", "int4", "varchar", "text", "timestamptz",
)  # fmt: skip
"""The columns' types as COPY's binary format writes them (the table's, exactly)."""


def _insert(
    conn: Connection,
    device_id: str,
    epoch: str,
    records: list[ResultRecord],
    boots: dict[str, float],
    received: datetime,
) -> None:
    """Insert records whose keys are new: the stream's row lock, taken before ``_held``
    read the keys, keeps them new until commit (an upload of the same stream waits for
    it, and nothing else writes results).

    PostgreSQL: one binary ``COPY`` straight into the table, at every batch size. It
    measured faster than one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO
    NOTHING`` (the array parameters are built in Python, COPY's rows in psycopg's C)
    and than COPY into a temporary staging table followed by ``INSERT ... SELECT ... ON
    CONFLICT DO NOTHING`` (a second pass over the rows, and a table to create: per
    transaction that is catalog churn, per session it is state a pooler would lose);
    ``bench/ingest.py`` gives the figures. Nothing is lost without ``ON CONFLICT``:
    the key's unique constraint still holds, and a key stored behind the lock's back
    would fail the upload (the device sends it again and ``_held`` finds it) instead
    of being counted as stored when it was not.

    SQLite: the driver's own ``executemany`` (in process, it costs nothing per row);
    SQLAlchemy's per-row parameter handling cost more than the database itself."""
    if not records:
        return
    sqlite_db = conn.dialect.name == "sqlite"
    stamp = _sqlite_time if sqlite_db else _aware_time
    at = stamp(received.timestamp())
    rows = []
    for r in records:
        started = boots.get(r.boot_id) if r.boot_id else None
        rows.append(
            (
                device_id,
                epoch,
                r.seq,
                stamp(r.wall if started is None else started + r.mono),
                r.wall,
                started is not None,
                r.boot_id,
                r.digest,
                r.slot,
                r.revision,
                r.encoding.value,
                r.payload,
                at,
            )
        )
    if sqlite_db:
        marks = ", ".join("?" * len(rows[0]))
        conn.exec_driver_sql(
            f"INSERT INTO result ({_COLUMNS}) VALUES ({marks}) "
            "ON CONFLICT (device_id, epoch, seq) DO NOTHING",
            rows,  # type: ignore[arg-type]
        )
        return
    with conn.connection.cursor() as cur, cur.copy(_COPY) as copy:  # type: ignore[attr-defined]
        copy.set_types(_COPY_TYPES)
        for row in rows:
            copy.write_row(row)


def _sqlite_time(seconds: float) -> str:
    """As SQLAlchemy's SQLite ``DateTime`` stores a UTC time, so both read it back alike."""
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _aware_time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _refuse_conflicts(
    conn: Connection,
    device_id: str,
    epoch: str,
    records: list[ResultRecord],
    held: dict[int, tuple[str, str]],
    received: datetime,
) -> list[int]:
    """Of records already held, those whose payload differs: kept aside and returned."""
    refused = [r for r in records if held[r.seq] != (r.encoding.value, r.payload)]
    if refused:
        conn.execute(
            ResultConflict.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "device_id": device_id,
                    "epoch": epoch,
                    "seq": r.seq,
                    "encoding": r.encoding.value,
                    "payload": r.payload,
                    "received_at": received,
                }
                for r in refused
            ],
        )
    return [r.seq for r in refused]


# -- reading ------------------------------------------------------------------------


def list_results(
    rt: Runtime,
    who: Operator,
    *,
    device: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    order: str = "time",
    after: str | None = None,
    newest: bool = False,
    limit: int = 100,
) -> dict[str, Any]:
    """Results in ``[since, until)`` by corrected time, or in order of arrival.

    ``after`` is the ``next`` of the previous page. ``newest`` gives the last ``limit``
    (still oldest first), for a tail.
    """
    if order not in ORDERS:
        raise BadRequest(f"unknown order {order!r}; one of {', '.join(ORDERS)}", code="bad_order")
    if since is not None and until is not None and until <= since:
        raise BadRequest("until must be after since", code="bad_range")
    # SQLite stores times as UTC text without an offset: compare in UTC.
    since = since.astimezone(UTC) if since is not None else None
    until = until.astimezone(UTC) if until is not None else None
    table = Result.__table__  # type: ignore[attr-defined]
    q = select(*table.c, Site.name.label("site")).join(Device, Device.id == Result.device_id)
    q = q.join(Site, Site.id == Device.site_id)
    if device is not None:
        _check_device(rt, who, device)
        q = q.where(Result.device_id == device)
    if who.role == Role.installer:
        q = q.where(Device.site_id == who.site_id)
    if since is not None:
        q = q.where(Result.time >= since)
    if until is not None:
        q = q.where(Result.time < until)
    keys = (Result.time, Result.id) if order == "time" else (Result.id,)
    if after is not None:
        q = q.where(_after(keys, after, order, newest))
    ordered = [k.desc() for k in keys] if newest else list(keys)  # type: ignore[attr-defined]
    with reading(rt.engine) as conn:
        rows = conn.execute(q.order_by(*ordered).limit(min(limit, MAX_LIST))).all()
    if newest:
        rows.reverse()
    items = [_public(row) for row in rows]
    nxt = None
    if len(rows) == min(limit, MAX_LIST) and rows:
        edge = rows[0] if newest else rows[-1]
        nxt = _cursor(edge, order)
    return {"results": items, "next": nxt}


def _check_device(rt: Runtime, who: Operator, device_id: str) -> None:
    with reading(rt.engine) as conn:
        site_id = conn.execute(select(Device.site_id).where(Device.id == device_id)).scalar()
    if site_id is None or not who.may_act_at(site_id):
        raise NotFound(f"no device {device_id}", code="unknown_device")


def _cursor(row: Any, order: str) -> str:
    if order == "arrival":
        return str(row.id)
    return f"{aware(row.time).isoformat()}|{row.id}"  # type: ignore[union-attr]


def _after(keys: tuple[Any, ...], cursor: str, order: str, newest: bool) -> Any:
    try:
        if order == "arrival":
            values: tuple[Any, ...] = (int(cursor),)
        else:
            stamp, _, ident = cursor.partition("|")
            values = (aware(datetime.fromisoformat(stamp)).astimezone(UTC), int(ident))  # type: ignore[union-attr]
    except ValueError as exc:
        raise BadRequest(
            f"after={cursor!r} is not a cursor this listing gave (its 'next')", code="bad_cursor"
        ) from exc
    if len(keys) == 1:
        return keys[0] < values[0] if newest else keys[0] > values[0]
    lhs, rhs = tuple_(*keys), tuple_(*values)
    return lhs < rhs if newest else lhs > rhs


def _public(row: Any) -> dict[str, Any]:
    payload: Any = row.payload
    if row.encoding == PayloadEncoding.json.value:
        payload = json.loads(payload)
    return {
        "id": row.id,
        "device": row.device_id,
        "site": row.site,
        "epoch": row.epoch,
        "seq": row.seq,
        "time": aware(row.time).isoformat(),  # type: ignore[union-attr]
        "corrected": row.corrected,
        "device_time": datetime.fromtimestamp(row.device_time, UTC).isoformat(),
        "boot_id": row.boot_id,
        "digest": row.digest,
        "slot": row.slot,
        "revision": row.revision,
        "encoding": row.encoding,
        "payload": payload,
        "received_at": aware(row.received_at).isoformat(),  # type: ignore[union-attr]
    }
