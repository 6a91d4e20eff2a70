"""Inference results: devices upload batches (the answer is the remote ack); operators
query them by device and time range."""

from __future__ import annotations

import zlib
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from edgefleet.controller.api.deps import CurrentDevice, Reader, RuntimeDep
from edgefleet.controller.services import results
from edgefleet.errors import ApiError, BadRequest
from edgefleet.wire import MAX_BATCH_BYTES, ResultAck, ResultBatch

router = APIRouter(tags=["results"])


class BatchTooLarge(ApiError):
    status = 413
    default_code = "payload_too_large"


@router.post("/devices/{device_id}/results", response_model=ResultAck)
async def upload_results(device_id: CurrentDevice, request: Request, rt: RuntimeDep) -> ResultAck:
    """One batch, gzipped or not (``Content-Encoding``); safe to send again."""
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    body = _gunzip(raw) if encoding == "gzip" else raw
    if encoding not in ("gzip", "identity"):
        raise BadRequest(
            f"Content-Encoding {encoding!r} is not accepted: send gzip or nothing",
            code="bad_encoding",
        )
    if len(body) > MAX_BATCH_BYTES:
        raise BatchTooLarge(f"a result batch is at most {MAX_BATCH_BYTES} bytes as JSON")
    try:
        batch = ResultBatch.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(
            f"the result batch is not valid: {where}: {err['msg']}; nothing was stored",
            code="invalid_results",
        ) from exc
    return await run_in_threadpool(results.store, rt, device_id, batch)


def _gunzip(raw: bytes) -> bytes:
    """At most one byte over the limit, so a small bomb cannot fill memory."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(raw, MAX_BATCH_BYTES + 1)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid gzip: {exc}", code="bad_encoding") from exc
    if len(body) > MAX_BATCH_BYTES:
        raise BatchTooLarge(f"a result batch is at most {MAX_BATCH_BYTES} bytes as JSON")
    if not inflater.eof:
        raise BadRequest("the gzip body is cut short", code="bad_encoding")
    if inflater.unused_data:
        raise BadRequest(
            f"{len(inflater.unused_data)} bytes follow the gzip stream: send one gzip member",
            code="bad_encoding",
        )
    return body


@router.get("/results")
async def list_results(
    who: Reader,
    rt: RuntimeDep,
    device: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    order: str = "time",
    after: str | None = None,
    newest: bool = False,
    limit: Annotated[int, Query(ge=1, le=results.MAX_LIST)] = 100,
) -> dict[str, Any]:
    """``{"results": [...], "next": cursor}``; pass ``next`` back as ``after`` for more.
    ``order=time`` (corrected device time) or ``arrival`` (for following new results)."""
    return await run_in_threadpool(
        results.list_results,
        rt,
        who,
        device=device,
        since=_aware(since, "since"),
        until=_aware(until, "until"),
        order=order,
        after=after,
        newest=newest,
        limit=limit,
    )


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone (e.g. 2026-11-24T10:00:00Z)", code="bad_range")
    return value
