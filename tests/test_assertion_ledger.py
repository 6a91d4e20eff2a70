"""The ledger of spent device assertions: a key is new exactly once, keys that arrive
together share one commit, and a failed write fails its waiters without losing later
keys. On both databases, against the migrated schema."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, func, select, text

from edgefleet.controller.assertion_ledger import AssertionLedger
from edgefleet.controller.bootstrap import Prepared
from edgefleet.controller.db import make_engine
from edgefleet.controller.models import UsedAssertion
from edgefleet.controller.settings import Settings


@pytest.fixture
def engine(settings: Settings, prepared: Prepared):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.effective_database_url)
    yield engine
    engine.dispose()


def _commits(engine) -> list[int]:  # type: ignore[no-untyped-def]
    counted = [0]

    def count(_conn: object) -> None:
        counted[0] += 1

    event.listen(engine, "commit", count)
    return counted


def test_keys_arriving_together_share_a_commit_and_each_is_new_once(engine) -> None:  # type: ignore[no-untyped-def]
    ledger = AssertionLedger(engine)
    commits = _commits(engine)
    until = time.time() + 300
    answers = [ledger.spend(f"dev-{i}:jti", until) for i in range(500)]
    assert all(a.result(timeout=30) for a in answers)
    assert commits[0] < 50, f"{commits[0]} commits for 500 keys: not grouped"

    again = [ledger.spend(f"dev-{i}:jti", until) for i in range(0, 500, 50)]
    assert not any(a.result(timeout=30) for a in again), "a replayed key was taken as new"
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(UsedAssertion)) == 500


def test_the_same_key_twice_in_one_batch_is_new_only_once(engine) -> None:  # type: ignore[no-untyped-def]
    ledger = AssertionLedger(engine)
    start = threading.Barrier(8)
    answers: list[bool] = []

    def spend() -> None:
        start.wait()
        answers.append(ledger.spend("dev-1:same", time.time() + 300).result(timeout=30))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False] * 7 + [True]


def test_a_failed_write_fails_its_waiters_and_later_keys_are_recorded(
    engine, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    ledger = AssertionLedger(engine)
    assert ledger.spend("dev-1:a", time.time() + 300).result(timeout=30)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE usedassertion RENAME TO usedassertion_away"))
    failed = ledger.spend("dev-1:b", time.time() + 300)
    with pytest.raises(Exception, match="usedassertion"):
        failed.result(timeout=30)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE usedassertion_away RENAME TO usedassertion"))
    assert ledger.spend("dev-1:b", time.time() + 300).result(timeout=30), (
        "a key whose write failed must not count as spent"
    )


def test_the_writer_thread_ends_when_idle_and_starts_again(engine) -> None:  # type: ignore[no-untyped-def]
    ledger = AssertionLedger(engine, idle_seconds=0.1)
    assert ledger.spend("dev-1:x", time.time() + 300).result(timeout=30)
    deadline = time.monotonic() + 5
    while ledger._thread is not None:
        assert time.monotonic() < deadline, "the idle writer thread never ended"
        time.sleep(0.05)
    assert ledger.spend("dev-1:y", time.time() + 300).result(timeout=30)
