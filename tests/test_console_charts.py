"""The console's charts are SVG that parses as XML, carries the numbers it was given
(a point per bucket, bars whose widths sum to the row), says what it shows in words,
escapes every label and draws "no data yet" rather than failing on nothing."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from markupsafe import Markup

from edgefleet.controller.console import charts
from edgefleet.controller.console.charts import Bar, Line, Segment
from edgefleet.controller.console.series import (
    DeviceBucket,
    FleetHealth,
    ResultBucket,
    RolloutProgress,
    SiteHealth,
    StatusBucket,
    WaveProgress,
)

NS = {"s": charts.SVG_NS}
T0 = datetime(2030, 1, 1, 22, 0, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)
HOSTILE = '<script>alert("x")</script> & "shop"'


def parse(svg: Markup) -> ET.Element:
    assert isinstance(svg, Markup)
    return ET.fromstring(str(svg))


def starts(n: int, step: timedelta = HALF_HOUR, t0: datetime = T0) -> list[datetime]:
    return [t0 + i * step for i in range(n)]


def points(path_d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", path_d)]


def lines_of(root: ET.Element) -> list[ET.Element]:
    return root.findall(".//s:path[@class='ef-line']", NS)


def texts(root: ET.Element, css: str) -> list[str]:
    return [
        t.text or "" for t in root.iter(f"{{{charts.SVG_NS}}}text") if css in t.get("class", "")
    ]


def assert_responsive_and_labelled(root: ET.Element) -> str:
    assert root.get("viewBox", "").startswith("0 0 ")
    assert root.get("role") == "img"
    summary = root.get("aria-label", "")
    assert summary and root.find("s:title", NS) is not None
    assert root.find("s:title", NS).text == summary  # type: ignore[union-attr]
    return summary


# -- time charts ---------------------------------------------------------------------------


def test_a_time_chart_has_one_point_per_bucket_and_a_hover_title_with_each_number() -> None:
    values = [float(i * 3) for i in range(48)]
    root = parse(
        charts.time_chart("Results stored", starts(48), HALF_HOUR, [Line("stored", values)])
    )
    summary = assert_responsive_and_labelled(root)
    assert root.get("width") == "100%"
    assert (
        "48 buckets of 30 min" in summary and "highest 141" in summary and "latest 141" in summary
    )
    (line,) = lines_of(root)
    pts = points(line.get("d", ""))
    assert len(pts) == 48
    xs = [x for x, _ in pts]
    assert xs == sorted(xs) and len(set(xs)) == 48
    ys = [y for _, y in pts]
    assert ys == sorted(ys, reverse=True), "a growing series must climb (SVG y grows downwards)"
    buckets = root.findall(".//s:g[@class='ef-bucket']", NS)
    assert len(buckets) == 48
    tips = [b.find("s:title", NS).text for b in buckets]  # type: ignore[union-attr]
    assert tips[0] == "1 Jan 22:00-22:30: stored 0"
    assert tips[47] == "2 Jan 21:30-22:00: stored 141"


def test_missing_buckets_are_gaps_not_zeros() -> None:
    values: list[float | None] = [5.0, 6.0, None, None, 7.0, None, 8.0, 9.0]
    root = parse(charts.time_chart("p95", starts(8), HALF_HOUR, [Line("p95", values)], unit="ms"))
    runs = [points(p.get("d", "")) for p in lines_of(root)]
    assert [len(r) for r in runs] == [2, 1, 2]
    assert len(root.findall(".//s:circle[@class='ef-dot']", NS)) == 1, "a lone point shows as a dot"
    tips = [b.find("s:title", NS).text for b in root.findall(".//s:g[@class='ef-bucket']", NS)]  # type: ignore[union-attr]
    assert tips[2].endswith("p95 -") and tips[0].endswith("p95 5 ms")
    assert "ms" in texts(root, "ef-unit")


def test_several_series_share_the_axes_each_with_its_class_and_a_legend() -> None:
    lines = [
        Line("healthy", [10.0] * 6, "ef-ok"),
        Line("unhealthy", [0.0, 1.0, 2.0, 0.0, 0.0, 3.0], "ef-bad"),
    ]
    root = parse(charts.time_chart("Devices", starts(6), HALF_HOUR, lines, area=True))
    groups = {
        g.get("class"): g for g in root.findall("s:g", NS) if g.get("class") in ("ef-ok", "ef-bad")
    }
    assert set(groups) == {"ef-ok", "ef-bad"}
    for g in groups.values():
        assert len(points(g.find("s:path[@class='ef-line']", NS).get("d", ""))) == 6  # type: ignore[union-attr]
        assert g.find("s:path[@class='ef-area']", NS) is not None
    legend = texts(root, "ef-legend-label")
    assert legend == ["healthy", "unhealthy"]
    # The same value is drawn at the same height in both series.
    ok = points(groups["ef-ok"].find("s:path[@class='ef-line']", NS).get("d", ""))  # type: ignore[union-attr]
    bad = points(groups["ef-bad"].find("s:path[@class='ef-line']", NS).get("d", ""))  # type: ignore[union-attr]
    assert bad[0][1] > ok[0][1] and bad[0][0] == ok[0][0]


def test_y_ticks_are_round_numbers_from_zero_to_at_least_the_highest_value() -> None:
    for top, whole, expected in [
        (141, True, [0, 50, 100, 150]),
        (7, True, [0, 2, 4, 6, 8]),
        (2, True, [0, 1, 2]),
        (0.03, False, [0, 0.01, 0.02, 0.03]),
        (0.7, False, [0, 0.2, 0.4, 0.6, 0.8]),
        (0, True, [0, 1]),
    ]:
        assert charts.y_ticks(top, whole) == expected
    root = parse(charts.time_chart("x", starts(4), HALF_HOUR, [Line("a", [3.0, 141.0, 7.0, 0.0])]))
    assert texts(root, "ef-tick")[1:5] == ["0", "50", "100", "150"]


def test_x_ticks_fall_on_round_times_of_the_zone_the_chart_is_shown_in() -> None:
    line = [Line("a", [1.0] * 48)]
    utc = parse(charts.time_chart("x", starts(48), HALF_HOUR, line))
    labels = texts(utc, "ef-tick")
    assert labels[0] == "UTC"
    clocks = [t for t in labels if re.fullmatch(r"\d\d:\d\d", t)]
    assert clocks and all(c.endswith(":00") and int(c[:2]) % 6 == 0 for c in clocks), labels
    assert "2 Jan" in labels, "the day shows where it changes"
    paris = parse(charts.time_chart("x", starts(48), HALF_HOUR, line, tz=ZoneInfo("Europe/Paris")))
    labels = texts(paris, "ef-tick")
    assert labels[0] == "CET"
    assert "1 Jan 23:00" in paris.get("aria-label", ""), "the summary speaks the chart's zone"
    clocks = [t for t in labels if re.fullmatch(r"\d\d:\d\d", t)]
    assert clocks and all(int(c[:2]) % 6 == 0 for c in clocks), labels
    # UTC+05:45 is off a 30-minute grid: ticks still come, on every k-th edge.
    nepal = parse(
        charts.time_chart("x", starts(48), HALF_HOUR, line, tz=ZoneInfo("Asia/Kathmandu"))
    )
    assert 3 <= len([t for t in texts(nepal, "ef-tick") if re.fullmatch(r"\d\d:\d\d", t)]) <= 6


def test_last_hour_by_minute_ticks_every_ten_or_fifteen_minutes() -> None:
    minute = timedelta(minutes=1)
    root = parse(charts.time_chart("x", starts(60, minute), minute, [Line("a", [1.0] * 60)]))
    clocks = [t for t in texts(root, "ef-tick") if re.fullmatch(r"\d\d:\d\d", t)]
    assert 4 <= len(clocks) <= 7 and all(int(c[3:]) % 10 == 0 for c in clocks), clocks


def test_a_series_of_the_wrong_length_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="3 values for 4 buckets"):
        charts.time_chart("x", starts(4), HALF_HOUR, [Line("a", [1.0, 2.0, 3.0])])


@pytest.mark.parametrize(
    "lines",
    [[], [Line("a", [None] * 4)]],
    ids=["no-series", "no-values"],
)
def test_a_time_chart_without_data_says_so(lines: list[Line]) -> None:
    for svg in (
        charts.time_chart("Results", starts(4), HALF_HOUR, lines),
        charts.time_chart("Results", [], HALF_HOUR, []),
    ):
        root = parse(svg)
        assert assert_responsive_and_labelled(root) == "Results: no data yet"
        assert texts(root, "ef-empty") == ["no data yet"]
        assert not lines_of(root)


# -- stacked bars --------------------------------------------------------------------------

OUTCOMES = [
    Segment("succeeded", "succeeded", "ef-ok"),
    Segment("failed", "failed", "ef-bad"),
    Segment("updating", "updating", "ef-active"),
    Segment("pending", "pending", "ef-muted"),
]


def bar_rects(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter(f"{{{charts.SVG_NS}}}rect") if "ef-bar" in r.get("class", "")]


def test_each_bar_is_cut_in_proportion_and_its_widths_sum_to_the_full_width() -> None:
    bars = [
        Bar("wave 1 (canary)", {"succeeded": 1}),
        Bar("wave 2", {"succeeded": 30, "failed": 2, "updating": 8, "pending": 60}),
        Bar("wave 3", {"pending": 900, "unknown-key": 5}),
    ]
    root = parse(charts.stacked_bars("Rollout 7", bars, OUTCOMES))
    summary = assert_responsive_and_labelled(root)
    assert "wave 2: 100 (succeeded 30, failed 2, updating 8, pending 60)" in summary
    rects = bar_rects(root)
    assert [(r.get("data-key"), r.get("data-value")) for r in rects] == [
        ("succeeded", "1"),
        ("succeeded", "30"),
        ("failed", "2"),
        ("updating", "8"),
        ("pending", "60"),
        ("pending", "900"),
    ]
    full = charts.WIDTH - charts.RIGHT
    rows: dict[str, list[ET.Element]] = {}
    for r in rects:
        rows.setdefault(r.get("y", ""), []).append(r)
    assert len(rows) == 3
    for row in rows.values():
        assert sum(float(r.get("width", "0")) for r in row) == pytest.approx(full, abs=0.02)
        x = 0.0
        for r in row:  # side by side, no overlap, no hole
            assert float(r.get("x", "")) == pytest.approx(x, abs=0.02)
            x += float(r.get("width", ""))
    wave2 = {r.get("data-key"): float(r.get("width", "")) for r in list(rows.values())[1]}
    assert wave2["pending"] == pytest.approx(full * 0.6, abs=0.02)
    assert wave2["failed"] == pytest.approx(full * 0.02, abs=0.02)
    assert {r.get("data-key"): r.get("class", "").split()[0] for r in rects} == {
        "succeeded": "ef-ok",
        "failed": "ef-bad",
        "updating": "ef-active",
        "pending": "ef-muted",
    }
    assert texts(root, "ef-legend-label") == [
        "succeeded 31",
        "failed 2",
        "updating 8",
        "pending 960",
    ]
    assert texts(root, "ef-bar-label") == ["wave 1 (canary) · 1", "wave 2 · 100", "wave 3 · 900"]


def test_an_empty_row_is_drawn_empty_and_no_rows_at_all_say_no_data() -> None:
    root = parse(
        charts.stacked_bars("Waves", [Bar("wave 1", {"succeeded": 2}), Bar("wave 2", {})], OUTCOMES)
    )
    assert len(bar_rects(root)) == 2  # the segment, and wave 2's dashed outline
    for bars in ([], [Bar("wave 1", {}), Bar("wave 2", {"pending": 0})]):
        root = parse(charts.stacked_bars("Waves", bars, OUTCOMES))
        assert root.get("aria-label") == "Waves: no data yet"
        assert texts(root, "ef-empty") == ["no data yet"]


# -- escaping ------------------------------------------------------------------------------


def test_hostile_labels_are_text_never_markup() -> None:
    svgs = [
        charts.time_chart(HOSTILE, starts(3), HALF_HOUR, [Line(HOSTILE, [1.0, 2.0, 3.0], HOSTILE)]),
        charts.stacked_bars(
            HOSTILE, [Bar(HOSTILE, {"ok": 1})], [Segment(HOSTILE, HOSTILE, HOSTILE)]
        ),
        charts.stacked_bars(HOSTILE, [Bar(HOSTILE, {"ok": 1})], [Segment("ok", HOSTILE, "ef-ok")]),
        charts.sparkline(HOSTILE, [1.0, 2.0]),
        charts.time_chart(HOSTILE, [], HALF_HOUR, []),
    ]
    for svg in svgs:
        assert "<script" not in svg
        root = parse(svg)
        assert not [e for e in root.iter() if e.tag.endswith("script")]
        assert HOSTILE in root.get("aria-label", "")
        assert any(HOSTILE in (t.text or "") for t in root.iter(f"{{{charts.SVG_NS}}}text")) or (
            "spark" in root.get("class", "")
        )


# -- sparklines ----------------------------------------------------------------------------


def test_a_sparkline_has_a_point_per_value_a_dot_on_the_latest_and_a_summary() -> None:
    root = parse(charts.sparkline("p95", [4.0, 6.0, None, 12.0, 9.5], unit="ms", css="ef-warn"))
    assert root.get("class") == "ef-spark ef-warn"
    assert root.get("aria-label") == "p95: latest 9.5 ms, lowest 4 ms, highest 12 ms"
    runs = [points(p.get("d", "")) for p in lines_of(root)]
    assert [len(r) for r in runs] == [2, 2]
    dot = root.find("s:circle", NS)
    assert dot is not None and float(dot.get("cx", "")) == pytest.approx(runs[-1][-1][0])
    highest = min(y for r in runs for _, y in r)
    assert runs[1][0][1] == highest, "12 ms is the top of the line"


def test_a_sparkline_of_nothing_is_a_dashed_line_saying_no_data() -> None:
    for values in ([], [None, None]):
        root = parse(charts.sparkline("errors", values))
        assert root.get("aria-label") == "errors: no data yet"
        assert not lines_of(root) and root.find("s:line[@class='ef-empty']", NS) is not None


def test_numbers_read_short_and_exact_enough() -> None:
    assert [charts.number(v) for v in (0, 7, 1234, 12.5, 0.031, 25_000, 2_100_000, 153.7)] == [
        "0",
        "7",
        "1,234",
        "12.5",
        "0.031",
        "25k",
        "2.1M",
        "154",
    ]


# -- the console's charts, from the series -------------------------------------------------


def day_of(n: int = 48) -> list[tuple[datetime, datetime]]:
    return [(s, s + HALF_HOUR) for s in starts(n)]


def test_results_chart_draws_a_point_per_bucket_and_nothing_stored_says_no_data() -> None:
    points = [ResultBucket(s, e, i % 5) for i, (s, e) in enumerate(day_of())]
    root = parse(charts.results_chart(points))
    (line,) = lines_of(root)
    assert len(points_in(line)) == 48
    assert "latest 2" in root.get("aria-label", "")
    empty = parse(charts.results_chart([ResultBucket(s, e, 0) for s, e in day_of()]))
    assert empty.get("aria-label") == "Results stored: no data yet"
    assert parse(charts.results_chart([])).get("aria-label") == "Results stored: no data yet"


def points_in(path: ET.Element) -> list[tuple[float, float]]:
    return points(path.get("d", ""))


def test_health_and_latency_charts_leave_gaps_where_no_device_reported() -> None:
    buckets = [
        StatusBucket(s, e, rep, rep - bad, bad, med, top)
        for (s, e), (rep, bad, med, top) in zip(
            day_of(4),
            [(3, 1, 20.0, 40.0), (0, 0, None, None), (2, 0, 11.0, 12.0), (2, 2, 15.0, 90.0)],
            strict=True,
        )
    ]
    health = parse(charts.health_chart(buckets))
    groups = {g.get("class"): g for g in health.findall("s:g", NS)}
    ok_runs = [points_in(p) for p in groups["ef-ok"].findall("s:path[@class='ef-line']", NS)]
    assert [len(r) for r in ok_runs] == [1, 2]
    tips = [b.find("s:title", NS).text for b in health.findall(".//s:g[@class='ef-bucket']", NS)]  # type: ignore[union-attr]
    assert tips[0].endswith("healthy 2, unhealthy 1") and tips[1].endswith("healthy -, unhealthy -")
    latency = parse(charts.latency_chart(buckets))
    assert texts(latency, "ef-legend-label") == ["median", "max"]
    assert "max: latest 90 ms, lowest 12 ms, highest 90 ms" in latency.get("aria-label", "")


def test_device_charts_show_error_rates_in_percent_and_refuse_unknown_metrics() -> None:
    points = [
        DeviceBucket(s, e, 1, True, "ready", 1, 5.0 + i, 0.1 * i, i, 0)
        for i, (s, e) in enumerate(day_of(3))
    ]
    root = parse(charts.device_chart(points, "error_rate"))
    assert "latest 20%" in root.get("aria-label", "") and "%" in texts(root, "ef-unit")
    spark = parse(charts.device_sparkline(points, "p95_ms"))
    assert spark.get("aria-label") == "Inference p95: latest 7 ms, lowest 5 ms, highest 7 ms"
    with pytest.raises(ValueError, match="unknown device metric 'temperature'"):
        charts.device_chart(points, "temperature")


def test_rollout_chart_has_a_bar_per_wave_summing_to_its_devices() -> None:
    progress = RolloutProgress(
        rollout_id=7,
        profile="vision",
        revision=3,
        state="running",
        current_wave=2,
        devices=104,
        counts={"succeeded": 5, "failed": 1, "updating": 8, "pending": 90},
        waves=[
            WaveProgress(1, "1", "passed", 1, {"succeeded": 1, "failed": 0, "pending": 0}),
            WaveProgress(2, "10%", "updating", 13, {"succeeded": 4, "failed": 1, "updating": 8}),
            WaveProgress(3, "100%", "pending", 90, {"pending": 90}),
        ],
    )
    root = parse(charts.rollout_chart(progress))
    assert texts(root, "ef-title") == ["Rollout 7: vision to revision 3, running"]
    assert texts(root, "ef-bar-label") == [
        "Wave 1 (1, passed) · 1",
        "Wave 2 (10%, updating) · 13",
        "Wave 3 (100%, pending) · 90",
    ]
    values = [int(r.get("data-value", "")) for r in bar_rects(root)]
    assert sum(values) == 104
    assert texts(root, "ef-legend-label")[:3] == ["succeeded 5", "failed 1", "updating 8"]


def health_of(sites: list[SiteHealth]) -> FleetHealth:
    by_state: dict[str, int] = {}
    for h in sites:
        for k, v in h.by_state.items():
            by_state[k] = by_state.get(k, 0) + v
    return FleetHealth(
        T0,
        sum(h.devices for h in sites),
        sum(h.online for h in sites),
        sum(h.degraded for h in sites),
        sum(h.offline for h in sites),
        by_state,
        sites,
    )


def test_site_chart_shows_the_most_troubled_sites_first_with_hostile_names_escaped() -> None:
    sites = [SiteHealth(i, f"shop-{i:02d}", 10, 10, 0, 0, {"ready": 10}) for i in range(20)]
    sites[13] = SiteHealth(13, HOSTILE, 10, 2, 3, 5, {"ready": 5, "degraded": 3, "enrolled": 2})
    sites[4] = SiteHealth(4, "shop-04", 10, 8, 0, 2, {"ready": 10})
    health = health_of(sites)
    root = parse(charts.sites_chart(health, limit=5))
    assert "<script" not in str(charts.sites_chart(health, limit=5))
    labels = texts(root, "ef-bar-label")
    assert labels[0] == f"{HOSTILE} · 10" and labels[1] == "shop-04 · 10" and len(labels) == 5
    assert texts(root, "ef-title") == [
        "Sites: online, degraded, offline (5 of 20 sites, most troubled first)"
    ]
    first_row = [r for r in bar_rects(root) if r.get("y") == bar_rects(root)[0].get("y")]
    assert [(r.get("data-key"), r.get("data-value")) for r in first_row] == [
        ("online", "2"),
        ("degraded", "3"),
        ("offline", "5"),
    ]
    states = parse(
        charts.fleet_states_chart(
            health_of([*sites, SiteHealth(99, "x", 0, 0, 0, 0, {"decommissioned": 4})])
        )
    )
    values = {r.get("data-key"): int(r.get("data-value", "")) for r in bar_rects(states)}
    assert values == {"ready": 195, "degraded": 3, "enrolled": 2}, "decommissioned is not the fleet"
