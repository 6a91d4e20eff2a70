"""The agent's uploader against the real controller app (in process, both databases):
what it declares skipped, where it resumes, and what it does when the controller's
ack is behind what the device already deleted."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from edgefleet.agent.buffer import Buffer, Policy, Record
from edgefleet.agent.uploader import Uploader, UploadError
from edgefleet.errors import EdgefleetError
from edgefleet.wire import ResultAck
from tests.support.apiclient import Api, TestDevice


def _records(start: int, count: int, size: int = 40) -> list[Record]:
    return [{"payload": {"i": i, "pad": "x" * size}} for i in range(start, start + count)]


def _post(api: Api, device: TestDevice) -> Callable[[Callable[[], bytes]], ResultAck]:
    def post(body: Callable[[], bytes]) -> ResultAck:
        r = api.client.post(
            f"/api/v1/devices/{device.id}/results",
            content=body(),
            headers={**device.bearer, "Content-Encoding": "gzip"},
        )
        if r.status_code != 200:
            raise EdgefleetError(f"HTTP {r.status_code}: {r.text}")
        return ResultAck.model_validate_json(r.content)

    return post


def _drain(up: Uploader) -> int:
    batches = 0
    while up.step():
        batches += 1
    return batches


def _stored(api: Api, device: TestDevice) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"device": device.id, "order": "arrival", "limit": 1000}
        if after:
            params["after"] = after
        page = api.ok("GET", "/results", api.admin, params=params)
        out += page["results"]
        after = page["next"]
        if not after:
            return out


@pytest.fixture
def device(api: Api) -> TestDevice:
    api.site()
    return api.device(api.token()["token"])


def test_drains_in_batches_in_order_and_deletes_only_what_was_acked(
    api: Api, device: TestDevice, tmp_path: Path
) -> None:
    path = tmp_path / "results.db"
    with Buffer(path) as buf:
        buf.append_many(_records(0, 2500))
    up = Uploader(path, _post(api, device), batch_records=1000)
    assert _drain(up) == 3
    up.close()
    stored = _stored(api, device)
    assert [r["seq"] for r in stored] == list(range(1, 2501))
    assert [r["payload"]["i"] for r in stored] == list(range(2500))
    with Buffer(path) as buf:
        assert buf.stats().depth == 0 and buf.acked == 2500


def test_a_restarted_uploader_resumes_from_the_ack_it_kept(
    api: Api, device: TestDevice, tmp_path: Path
) -> None:
    path = tmp_path / "results.db"
    with Buffer(path) as buf:
        buf.append_many(_records(0, 300))
    first = Uploader(path, _post(api, device), batch_records=100)
    assert first.step()
    first.close()
    again = Uploader(path, _post(api, device), batch_records=100)
    _drain(again)
    again.close()
    assert len(_stored(api, device)) == 300
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        duplicates = conn.execute(text("SELECT duplicates FROM resultstream")).scalar_one()
    assert duplicates == 0, "a restart sent acked results again"


def test_a_lost_answer_sends_the_batch_again_and_it_is_stored_once(
    api: Api, device: TestDevice, tmp_path: Path
) -> None:
    path = tmp_path / "results.db"
    with Buffer(path) as buf:
        buf.append_many(_records(0, 50))
    real = _post(api, device)

    def lose_answer(body: Callable[[], bytes]) -> ResultAck:
        real(body)
        raise EdgefleetError("connection reset while reading the answer")

    with pytest.raises(EdgefleetError):
        Uploader(path, lose_answer).step()
    up = Uploader(path, real)
    _drain(up)
    up.close()
    assert [r["seq"] for r in _stored(api, device)] == list(range(1, 51))
    with Buffer(path) as buf:
        assert buf.stats().depth == 0


def test_evicted_results_are_declared_skipped_and_the_ack_passes_them(
    api: Api, device: TestDevice, tmp_path: Path
) -> None:
    path = tmp_path / "results.db"
    with Buffer(path) as buf:
        buf.configure(1024 * 1024, Policy.DROP_OLDEST)
        for start in range(0, 12_000, 1000):
            buf.append_many(_records(start, 1000, size=200))
        kept = [r.seq for r in buf.read_from(0, limit_count=20_000, limit_bytes=1 << 30)]
        assert buf.stats().drops["oldest"] == 12_000 - len(kept)
    up = Uploader(path, _post(api, device))
    _drain(up)
    up.close()
    assert [r["seq"] for r in _stored(api, device)] == kept
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        gaps = conn.execute(text("SELECT first, last, reason FROM resultgap")).all()
        acked = conn.execute(text("SELECT acked FROM resultstream")).scalar_one()
    assert [tuple(g) for g in gaps] == [(1, kept[0] - 1, "evicted")]
    assert acked == 12_000


def test_a_controller_that_lost_acked_results_is_told_they_are_gone(
    api: Api, device: TestDevice, tmp_path: Path
) -> None:
    """Its database was restored from a backup older than the device's last ack."""
    path = tmp_path / "results.db"
    with Buffer(path) as buf:
        buf.append_many(_records(0, 100))
    up = Uploader(path, _post(api, device))
    _drain(up)
    engine = api.client.app.state.rt.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM result WHERE seq > 60"))
        conn.execute(text("UPDATE resultstream SET acked = 60"))
    with Buffer(path) as buf:
        buf.append_many(_records(100, 20))
    _drain(up)
    up.close()
    assert [r["seq"] for r in _stored(api, device)] == [*range(1, 61), *range(101, 121)]
    with engine.connect() as conn:
        gaps = conn.execute(text("SELECT first, last, reason FROM resultgap")).all()
        acked = conn.execute(text("SELECT acked FROM resultstream")).scalar_one()
    assert [tuple(g) for g in gaps] == [(61, 100, "acked")] and acked == 120


def test_an_ack_that_does_not_cover_the_batch_is_an_error_and_nothing_is_deleted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "results.db"
    with Buffer(path) as buf:
        buf.append_many(_records(0, 10))
        epoch = buf.epoch
    short = Uploader(path, lambda body: ResultAck(epoch=epoch, acked=4))
    with pytest.raises(UploadError, match="acked up to 4 for a batch up to 10"):
        short.step()
    other = Uploader(path, lambda body: ResultAck(epoch="f" * 16, acked=10))
    with pytest.raises(UploadError, match="epoch"):
        other.step()
    short.close()
    other.close()
    with Buffer(path) as buf:
        assert buf.stats().depth == 10


def test_a_failed_delete_does_not_send_what_the_controller_acked_again(
    api: Api, device: TestDevice, tmp_path: Path
) -> None:
    """A full disk can refuse the delete after an ack: the next batch starts after the ack
    all the same, and the delete is done with the next one."""
    path = tmp_path / "results.db"
    with Buffer(path) as buf:
        buf.append_many(_records(0, 30))
    up = Uploader(path, _post(api, device), batch_records=10)
    assert up.step()
    buffer = up._buffer
    assert buffer is not None

    def disk_full(seq: int) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    buffer.delete_through = disk_full  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        up.step()  # acked 11-20 at the controller, but not deleted here
    up.close()  # the thread's loop reopens the buffer after such an error
    _drain(up)
    up.close()
    assert [r["seq"] for r in _stored(api, device)] == list(range(1, 31))
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        duplicates = conn.execute(text("SELECT duplicates FROM resultstream")).scalar_one()
    assert duplicates == 0
    with Buffer(path) as buf:
        assert buf.stats().depth == 0 and buf.acked == 30
