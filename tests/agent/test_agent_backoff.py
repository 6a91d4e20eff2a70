"""Backoff and Retry-After: a fleet that lost its controller must not come back in one burst."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import pytest

from edgefleet.agent.backoff import MAX_RETRY_AFTER_S, Backoff, jittered, parse_retry_after
from edgefleet.agent.clock import Clock


def test_backoff_grows_is_capped_and_jittered():
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    ceilings, delays = [], []
    for attempt in range(1, 13):
        ceilings.append(min(60.0, 2 ** (attempt - 1)))
        delays.append(b.next_delay())
    assert all(0.1 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 60.0
    # grows: late attempts wait far longer on average than early ones
    late = [Backoff(1.0, 60.0, rng=random.Random(i)) for i in range(200)]
    for b2 in late:
        for _ in range(9):
            b2.next_delay()
    mean_late = sum(b2.next_delay() for b2 in late) / len(late)
    assert 20 < mean_late < 40  # uniform(0, 60) has mean 30: capped, and jittered
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_backoff_resets_after_success():
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(1))
    for _ in range(10):
        b.next_delay()
    b.reset()
    assert b.next_delay() <= 1.0


def test_retry_after_wins_over_the_schedule_with_a_little_jitter():
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(3))
    for _ in range(20):
        d = b.next_delay(retry_after=30)
        assert 30 <= d <= 33


def test_retry_after_parses_seconds_and_http_dates():
    now = time.time()
    assert parse_retry_after("120") == 120
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == pytest.approx(
        90, abs=1.0
    )
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0
    assert parse_retry_after("99999999") == MAX_RETRY_AFTER_S
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_interval_jitter_is_ten_percent_and_never_below_a_second():
    rng = random.Random(5)
    samples = [jittered(10, rng) for _ in range(500)]
    assert min(samples) >= 9.0 and max(samples) <= 11.0
    assert max(samples) - min(samples) > 1.5
    assert jittered(0, rng) == 1.0


def test_clock_offset_comes_from_the_date_header():
    c = Clock()
    c.observe(formatdate(time.time() + 5400, usegmt=True))
    assert 5398 < c.offset <= 5400.5
    assert abs(c.now() - (time.time() + 5400)) < 2
    c.observe("not a date")
    assert 5398 < c.offset <= 5400.5  # an unreadable header changes nothing
