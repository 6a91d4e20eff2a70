"""Wave plans: parsing, stable membership, groups, and site maintenance windows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from edgefleet.controller.rollouts.plan import Member, Step, assign, parse_steps
from edgefleet.controller.rollouts.windows import is_open, next_open, parse_window, zone
from edgefleet.errors import BadRequest
from tests.support.apiclient import Api


def fleet(n: int, start: int = 0) -> list[Member]:
    return [Member(f"dev-{i:05d}", f"site-{i % 7}") for i in range(start, start + n)]


def test_a_plan_reads_counts_shares_and_groups() -> None:
    assert parse_steps("1, 5%,25%,100%") == [
        Step(count=1),
        Step(percent=5),
        Step(percent=25),
        Step(percent=100),
    ]
    assert parse_steps("ring=canary,10%,100%")[0] == Step(label=("ring", "canary"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "at least one step"),
        ("1,5%,50%", "must be 100%"),
        ("1,25%,5%,100%", "does not grow"),
        ("5%,1,100%", "device counts come first"),
        ("1,150%", "at most 100%"),
        ("1,half,100%", "is not a count"),
        ("ring=,100%", "key=value"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_steps(text)


def test_waves_are_cumulative_and_cover_every_device_once() -> None:
    waves = assign(fleet(1000), parse_steps("1,5%,25%,100%"), "rollout-1")
    assert [len(w.members) for w in waves] == [1, 49, 200, 750]
    ids = [m.device_id for w in waves for m in w.members]
    assert len(ids) == len(set(ids)) == 1000


def test_membership_is_stable_when_devices_join_and_differs_between_rollouts() -> None:
    steps = parse_steps("1,10%,100%")
    before = assign(fleet(500), steps, "rollout-7")
    after = assign(fleet(500) + fleet(50, start=500), steps, "rollout-7")
    rank = {m.device_id: i for i, m in enumerate(m for w in after for m in w.members)}
    # A device that joined may land anywhere, but the old ones keep their order.
    old_order = [m.device_id for w in before for m in w.members]
    assert sorted(old_order, key=rank.__getitem__) == old_order
    other = assign(fleet(500), steps, "rollout-8")
    assert other[0].members != before[0].members  # another rollout, another canary


def test_an_explicit_group_goes_first_and_counts_towards_the_shares() -> None:
    members = [Member(f"dev-{i}", "s", {"ring": "canary"} if i < 3 else {}) for i in range(100)]
    waves = assign(members, parse_steps("ring=canary,10%,100%"), "r")
    assert {m.device_id for m in waves[0].members} == {"dev-0", "dev-1", "dev-2"}
    assert [len(w.members) for w in waves] == [3, 7, 90]


def test_offline_devices_and_sites_are_counted_per_wave() -> None:
    members = [Member(f"d{i}", f"s{i % 2}", online=i % 4 != 0) for i in range(40)]
    [wave] = assign(members, parse_steps("100%"), "r")
    assert wave.offline == 10 and wave.sites == {"s0", "s1"}


def test_maintenance_windows_are_in_site_local_time() -> None:
    nights = [parse_window("Mon-Fri 22:00-06:00"), parse_window("Sat,Sun 00:00-24:00")]
    paris = zone("Europe/Paris")
    tuesday_2330_paris = datetime(2026, 11, 24, 22, 30, tzinfo=UTC)
    assert is_open(nights, paris, tuesday_2330_paris)
    assert is_open(nights, paris, datetime(2026, 11, 25, 4, 30, tzinfo=UTC))  # 05:30 Wed
    tuesday_noon = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    assert not is_open(nights, paris, tuesday_noon)
    assert next_open(nights, paris, tuesday_noon) == datetime(2026, 11, 24, 21, 0, tzinfo=UTC)
    assert is_open([], paris, tuesday_noon)  # no windows: any time


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("weekdays 01:00-05:00", "days are Mon..Sun"),
        ("Mon 25:00-26:00", "times run"),
        ("Mon 01:00", "must read DAYS"),
        ("Mon 03:00-03:00", "times run"),
    ],
)
def test_bad_windows_are_refused(text: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_window(text)
    with pytest.raises(BadRequest, match="unknown time zone"):
        zone("Mars/Olympus")


def test_members_are_the_profiles_rendered_devices_narrowed_by_labels_and_sites(
    api: Api,
) -> None:
    from edgefleet.controller.rollouts.members import select_members

    api.site("shop-1")
    api.site("shop-2")
    api.profile("vision", {"config": {}})
    api.profile("other", {"config": {}})
    ids = {}
    for name, site, tier, profile in [
        ("a", "shop-1", "gold", "vision"),
        ("b", "shop-2", "gold", "vision"),
        ("c", "shop-1", "silver", "vision"),
        ("d", "shop-1", "gold", "other"),
    ]:
        token = api.token(site=site, labels={"tier": tier}, profile=profile)["token"]
        ids[name] = api.device(token).id
    engine = api.client.app.state.rt.engine  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    with engine.begin() as conn:  # "a" was heard from just now; the others never
        conn.execute(
            text("UPDATE device SET last_seen_at = :now WHERE id = :id"),
            {"now": now, "id": ids["a"]},
        )

    def chosen(**kw: Any) -> dict[str, bool]:
        found = select_members(engine, "vision", now=now, interval_seconds=10, **kw)
        return {next(k for k, v in ids.items() if v == m.device_id): m.online for m in found}

    assert chosen() == {"a": True, "b": False, "c": False}
    assert chosen(labels={"tier": "gold"}) == {"a": True, "b": False}
    assert chosen(labels={"tier": "gold"}, sites=["shop-2"]) == {"b": False}
