"""Charts for the console: inline SVG drawn on the server, no JavaScript, no asset fetched
from anywhere (a site LAN has no internet). A page puts the returned ``Markup`` as is.

Every chart is one ``<svg>`` with a ``viewBox`` and ``width="100%"``, so it shrinks to a
phone's width; ``role="img"``, an ``aria-label`` and a ``<title>`` carry a summary in
words (what a screen reader says, and the tooltip); each bucket, bar segment and point
has its own ``<title>`` with its numbers, which browsers show on hover. Every label is
escaped. No data draws the same frame saying "no data yet", never an error.

Colours are CSS classes, so the console's stylesheet decides them: every mark paints
with ``currentColor``, so one ``color:`` per class is enough (``.ef-ok { color: #1a7f37 }``).

    ef-chart     the <svg> of a chart; ef-spark the <svg> of a sparkline
    ef-ok        good: ready, healthy, online, succeeded
    ef-bad       bad: degraded, unhealthy, failed
    ef-warn      needs a look, not failed: offline, awaiting approval, skipped
    ef-active    in progress: updating
    ef-muted     nothing to act on: pending, enrolled without a status yet, decommissioned,
                 rejected
    ef-other     done, neither good nor bad: reverted by a rollback
    ef-series-1..4   neutral series, in order (results; median then max p95; ...)
    ef-title, ef-axis (axis lines), ef-grid (grid lines), ef-tick (tick labels),
    ef-unit (the y axis' unit), ef-legend, ef-empty ("no data yet"), ef-line, ef-area,
    ef-bucket (a bucket's hover zone: transparent), ef-bar (a bar segment)

Times: buckets are instants (UTC in the database); a chart labels them in the ``tz`` it
is given (UTC unless the page passes the operator's or the site's zone) and names that
zone under the axis. Ticks fall on bucket edges at round local times (every 10 min, every
3 h...); where the zone's offset does not fall on the bucket grid (UTC+05:45 with
30-minute buckets), on every k-th edge instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

if TYPE_CHECKING:  # charts draw plain data; the queries stay out of their import
    from edgefleet.controller.console.series import (
        DeviceBucket,
        FleetHealth,
        ResultBucket,
        RolloutProgress,
        StatusBucket,
    )

WIDTH = 480
"""viewBox width: at a phone's 360 CSS pixels, 12-unit text still reads as 9 px."""
HEIGHT = 220
LEFT, RIGHT = 46, 10
PLOT_TOP, PLOT_BOTTOM = 54, 184
FONT = 12
NO_DATA = "no data yet"
SVG_NS = "http://www.w3.org/2000/svg"

TICK_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)
MAX_X_TICKS = 6


@dataclass(frozen=True, slots=True)
class Line:
    """One series of a time chart: a value per bucket, None where there is none."""

    label: str
    values: Sequence[float | None]
    css: str = "ef-series-1"


@dataclass(frozen=True, slots=True)
class Segment:
    """One kind of a stacked bar (an outcome, a state), in the order bars stack them."""

    key: str
    label: str
    css: str


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of a stacked bar chart: its label and its count per segment key."""

    label: str
    counts: Mapping[str, int]


# -- numbers and times ---------------------------------------------------------------


def number(value: float) -> str:
    """Short and exact enough to read: 1,234; 12.5; 0.031; 2.1M."""
    if value != value:  # NaN
        return "-"
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    if value == int(value):
        return f"{int(value):,}"
    if size >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _nice_step(span: float, intervals: int = 4) -> float:
    raw = span / intervals
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if mult * power >= raw:
            return mult * power
    return 10 * power  # pragma: no cover - the loop always returns


def y_ticks(top: float, whole: bool = False) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 times a power of ten) up to the first at or
    above ``top``; ``whole``: counts, so no step under 1."""
    if top <= 0:
        top = 1.0
    step = _nice_step(top)
    if whole:
        step = max(1.0, round(step))
    count = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(count + 1)]


def _local(t: datetime, tz: tzinfo) -> datetime:
    return t.astimezone(tz)


def _clock(t: datetime) -> str:
    return t.strftime("%H:%M")


def _day(t: datetime) -> str:
    return f"{t.day} {t.strftime('%b')}"


def _span_text(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _zone_name(t: datetime, tz: tzinfo) -> str:
    return _local(t, tz).tzname() or str(tz)


def x_ticks(edges: Sequence[datetime], tz: tzinfo) -> list[int]:
    """Indexes of the bucket edges that get a tick: round local times, at most six."""
    n = len(edges) - 1
    if n <= 0:
        return []
    step_min = (edges[1] - edges[0]).total_seconds() / 60
    span_min = step_min * n
    for every in TICK_MINUTES:
        if every < step_min or every % step_min or span_min / every > MAX_X_TICKS:
            continue
        picked = []
        for i, edge in enumerate(edges):
            local = _local(edge, tz)
            if local.second:
                continue
            if every >= 1440:
                ok = local.hour == local.minute == 0 and local.toordinal() % (every // 1440) == 0
            else:
                ok = (local.hour * 60 + local.minute) % every == 0
            if ok:
                picked.append(i)
        if picked:
            return picked
    k = max(1, math.ceil(n / (MAX_X_TICKS - 1)))
    return list(range(0, n + 1, k))


# -- svg pieces ------------------------------------------------------------------------


def _f(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _open(css: str, summary: str, width: int, height: int, size: str = 'width="100%"') -> str:
    s = escape(summary)
    return (
        f'<svg xmlns="{SVG_NS}" class="{escape(css)}" viewBox="0 0 {width} {height}" '
        f'{size} preserveAspectRatio="xMidYMid meet" role="img" aria-label="{s}" '
        f'font-size="{FONT}" font-family="sans-serif"><title>{s}</title>'
    )


def _text(x: float, y: float, text: str, css: str, anchor: str = "start", size: int = 0) -> str:
    extra = f' font-size="{size}"' if size else ""
    return (
        f'<text class="{css}" x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" '
        f'fill="currentColor"{extra}>{escape(text)}</text>'
    )


def _empty(title: str, css: str = "ef-chart", height: int = HEIGHT) -> Markup:
    mid = (PLOT_TOP + PLOT_BOTTOM) / 2 if height == HEIGHT else height / 2 + 10
    return Markup(
        _open(css, f"{title}: {NO_DATA}", WIDTH, height)
        + _text(0, 16, title, "ef-title", size=14)
        + f'<rect class="ef-axis" x="{LEFT}" y="26" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{height - 36}" fill="none" stroke="currentColor" stroke-dasharray="4 4"/>'
        + _text(WIDTH / 2, mid, NO_DATA, "ef-empty", "middle", size=14)
        + "</svg>"
    )


def _legend(items: Sequence[tuple[str, str]], y: float) -> tuple[str, float]:
    """Swatches and labels, wrapped to the width; returns the markup and the next free y."""
    parts, x = [], 0.0
    for label, css in items:
        w = 14 + 6.5 * len(label) + 12
        if x and x + w > WIDTH:
            x, y = 0.0, y + 16
        parts.append(
            f'<g class="ef-legend {escape(css)}"><rect x="{_f(x)}" y="{_f(y - 9)}" width="10" '
            f'height="10" fill="currentColor"/>'
            + _text(x + 14, y, label, "ef-legend-label")
            + "</g>"
        )
        x += w
    return "".join(parts), y + 16


# -- time series -----------------------------------------------------------------------


def time_chart(
    title: str,
    starts: Sequence[datetime],
    step: timedelta,
    lines: Sequence[Line],
    *,
    unit: str = "",
    area: bool = False,
    tz: tzinfo = UTC,
    fmt: Callable[[float], str] = number,
) -> Markup:
    """A line chart (``area``: filled below) of one or more series over fixed buckets:
    one point per bucket that has a value, at the bucket's middle; a gap where it has
    none. ``starts`` are the buckets' (aware) starts, ``step`` their width; each line has
    one value per bucket. The y axis starts at 0 (counts, latencies, rates)."""
    n = len(starts)
    present = [v for line in lines for v in line.values if v is not None]
    if not n or not present:
        return _empty(title)
    for line in lines:
        if len(line.values) != n:
            raise ValueError(f"series {line.label!r} has {len(line.values)} values for {n} buckets")
    edges = [*starts, starts[-1] + step]
    ticks = y_ticks(max(present), whole=all(float(v).is_integer() for v in present))
    top = ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, PLOT_BOTTOM - PLOT_TOP

    def x_at(i: float) -> float:
        return LEFT + plot_w * i / n

    def y_at(v: float) -> float:
        return PLOT_BOTTOM - plot_h * v / top

    zone = _zone_name(edges[-1], tz)
    first, last = _local(edges[0], tz), _local(edges[-1], tz)
    said = [
        f"{title}, {n} buckets of {_span_text(step)} from {_day(first)} {_clock(first)} "
        f"to {_day(last)} {_clock(last)} {zone}"
    ]
    for line in lines:
        vals = [v for v in line.values if v is not None]
        latest = next((v for v in reversed(line.values) if v is not None), None)
        if vals:
            said.append(
                f"{line.label}: latest {fmt(latest) if latest is not None else '-'}{_u(unit)}, "
                f"lowest {fmt(min(vals))}{_u(unit)}, highest {fmt(max(vals))}{_u(unit)}"
            )
        else:
            said.append(f"{line.label}: {NO_DATA}")
    out = [
        _open("ef-chart", "; ".join(said), WIDTH, HEIGHT),
        _text(0, 16, title, "ef-title", size=14),
        _text(WIDTH - RIGHT, 16, zone, "ef-tick ef-zone", "end"),
    ]
    legend, _ = _legend([(line.label, line.css) for line in lines], 34)
    out.append(legend)
    for v in ticks:
        y = y_at(v)
        out.append(
            f'<line class="ef-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_f(y)}" y2="{_f(y)}" '
            f'stroke="currentColor" stroke-opacity="0.15"/>'
        )
        out.append(_text(LEFT - 4, y + 4, fmt(v), "ef-tick", "end"))
    if unit:
        out.append(_text(LEFT - 4, PLOT_TOP - 6, unit, "ef-unit", "end"))
    out.append(
        f'<path class="ef-axis" d="M{LEFT},{PLOT_TOP}V{PLOT_BOTTOM}H{WIDTH - RIGHT}" '
        f'fill="none" stroke="currentColor"/>'
    )
    previous_day = None
    for i in x_ticks(edges, tz):
        x, local = x_at(i), _local(edges[i], tz)
        out.append(
            f'<line class="ef-axis" x1="{_f(x)}" x2="{_f(x)}" y1="{PLOT_BOTTOM}" '
            f'y2="{PLOT_BOTTOM + 4}" stroke="currentColor"/>'
        )
        daily = step >= timedelta(days=1) or (local.hour == local.minute == 0 and i)
        anchor = "start" if x - LEFT < 16 else "end" if WIDTH - RIGHT - x < 16 else "middle"
        out.append(
            _text(x, PLOT_BOTTOM + 16, _day(local) if daily else _clock(local), "ef-tick", anchor)
        )
        if not daily and local.date() != previous_day:
            out.append(_text(x, PLOT_BOTTOM + 29, _day(local), "ef-tick", anchor))
        previous_day = local.date()
    for line in lines:
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(line.values):
            if v is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((x_at(i + 0.5), y_at(v)))
        runs = [r for r in runs if r]
        g = [f'<g class="{escape(line.css)}">']
        for run in runs:
            if area:
                d = f"M{_f(run[0][0])},{PLOT_BOTTOM}" + "".join(f"L{_f(x)},{_f(y)}" for x, y in run)
                d += f"L{_f(run[-1][0])},{PLOT_BOTTOM}Z"
                g.append(f'<path class="ef-area" d="{d}" fill="currentColor" fill-opacity="0.15"/>')
        for run in runs:
            d = "M" + "L".join(f"{_f(x)},{_f(y)}" for x, y in run)
            g.append(
                f'<path class="ef-line" d="{d}" fill="none" stroke="currentColor" '
                f'stroke-width="2" stroke-linejoin="round" stroke-linecap="round"/>'
            )
            if len(run) == 1:  # a lone point between gaps: a dot, or it would not show
                x, y = run[0]
                dot = f'cx="{_f(x)}" cy="{_f(y)}" r="2.5" fill="currentColor"'
                g.append(f'<circle class="ef-dot" {dot}/>')
        g.append("</g>")
        out.append("".join(g))
    for i in range(n):
        a, b = _local(edges[i], tz), _local(edges[i + 1], tz)
        said_here = ", ".join(
            f"{line.label} {fmt(v)}{_u(unit)}" if (v := line.values[i]) is not None
            else f"{line.label} -"
            for line in lines
        )  # fmt: skip
        out.append(
            f'<g class="ef-bucket"><title>{escape(f"{_day(a)} {_clock(a)}-{_clock(b)}: ")}'
            f'{escape(said_here)}</title><rect x="{_f(x_at(i))}" y="{PLOT_TOP}" '
            f'width="{_f(plot_w / n)}" '
            f'height="{plot_h}" fill="transparent"/></g>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def _u(unit: str) -> str:
    return f" {unit}" if unit and unit != "%" else unit


# -- stacked bars ----------------------------------------------------------------------

BAR_H = 16
ROW_H = 38


def stacked_bars(title: str, bars: Sequence[Bar], segments: Sequence[Segment]) -> Markup:
    """One full-width bar per row, cut by segment in proportion to its counts (each row
    its own 100%: a canary wave of 1 device reads as well as a wave of 9,000), the row's
    total in its label, and a legend with each segment's total over the rows. Counts
    under keys not in ``segments`` are ignored."""
    keys = [s.key for s in segments]
    totals = [sum(max(0, bar.counts.get(k, 0)) for k in keys) for bar in bars]
    if not bars or not any(totals):
        return _empty(title, height=90)
    over = {s.key: sum(max(0, bar.counts.get(s.key, 0)) for bar in bars) for s in segments}
    legend, y = _legend([(f"{s.label} {number(over[s.key])}", s.css) for s in segments], 36)
    height = int(y + ROW_H * len(bars))
    said = [title] + [
        f"{bar.label}: {total} "
        + (
            "(" + ", ".join(
                f"{s.label} {bar.counts.get(s.key, 0)}" for s in segments
                if bar.counts.get(s.key, 0) > 0
            ) + ")"
            if total
            else ""
        )
        for bar, total in zip(bars, totals, strict=True)
    ]  # fmt: skip
    out = [
        _open("ef-chart", "; ".join(said), WIDTH, height),
        _text(0, 16, title, "ef-title", size=14),
    ]
    out.append(legend)
    width = WIDTH - RIGHT
    for bar, total in zip(bars, totals, strict=True):
        out.append(_text(0, y + 8, f"{bar.label} · {number(total)}", "ef-bar-label"))
        top = y + 13
        if not total:
            out.append(
                f'<rect class="ef-muted ef-bar" x="0" y="{_f(top)}" width="{width}" '
                f'height="{BAR_H}" fill="none" stroke="currentColor" stroke-dasharray="3 3">'
                f"<title>{escape(bar.label)}: none</title></rect>"
            )
        done = 0
        for s in segments:
            n = max(0, bar.counts.get(s.key, 0))
            if not n or not total:
                continue
            x0, x1 = width * done / total, width * (done + n) / total
            done += n
            tip = f"{bar.label}: {s.label} {n} of {total} ({100 * n / total:.0f}%)"
            out.append(
                f'<rect class="{escape(s.css)} ef-bar" data-key="{escape(s.key)}" data-value="{n}" '
                f'x="{_f(x0)}" y="{_f(top)}" width="{_f(x1 - x0)}" height="{BAR_H}" '
                f'fill="currentColor"><title>{escape(tip)}</title></rect>'
            )
        y += ROW_H
    out.append("</svg>")
    return Markup("".join(out))


# -- sparklines ------------------------------------------------------------------------

SPARK_W, SPARK_H = 120, 24
SPARK_SIZE = f'width="{SPARK_W}" height="{SPARK_H}"'


def sparkline(
    label: str,
    values: Sequence[float | None],
    *,
    css: str = "ef-series-1",
    unit: str = "",
    fmt: Callable[[float], str] = number,
) -> Markup:
    """A small line of a series' shape (one point per value, gaps where None) for a
    table cell, with a dot on the latest value; its summary says latest, lowest and
    highest. 120x24 by default; CSS may size it."""
    vals = [v for v in values if v is not None]
    if not vals:
        summary = f"{label}: {NO_DATA}"
        return Markup(
            _open("ef-spark ef-muted", summary, SPARK_W, SPARK_H, SPARK_SIZE)
            + f'<line class="ef-empty" x1="2" x2="{SPARK_W - 2}" y1="{SPARK_H / 2}" '
            f'y2="{SPARK_H / 2}" stroke="currentColor" stroke-dasharray="3 3"/></svg>'
        )
    lo, hi = min(vals), max(vals)
    latest = next(v for v in reversed(values) if v is not None)
    summary = (
        f"{label}: latest {fmt(latest)}{_u(unit)}, lowest {fmt(lo)}{_u(unit)}, "
        f"highest {fmt(hi)}{_u(unit)}"
    )
    n = len(values)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = 2 + (SPARK_W - 4) * (i / (n - 1) if n > 1 else 0.5)
        y = SPARK_H - 3 - (SPARK_H - 6) * ((v - lo) / (hi - lo) if hi > lo else 0.5)
        return x, y

    runs: list[list[tuple[float, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(xy(i, v))
    paths = "".join(
        f'<path class="ef-line" d="M{"L".join(f"{_f(x)},{_f(y)}" for x, y in run)}" fill="none" '
        f'stroke="currentColor" stroke-width="1.5" stroke-linejoin="round"/>'
        for run in runs
        if run
    )
    lx, ly = xy(max(i for i, v in enumerate(values) if v is not None), latest)
    return Markup(
        _open(f"ef-spark {css}", summary, SPARK_W, SPARK_H, SPARK_SIZE)
        + paths
        + f'<circle class="ef-dot" cx="{_f(lx)}" cy="{_f(ly)}" r="2" fill="currentColor"/></svg>'
    )


# -- the console's charts, from the series' dataclasses ---------------------------------

DEVICE_STATES = [
    Segment("ready", "ready", "ef-ok"),
    Segment("updating", "updating", "ef-active"),
    Segment("degraded", "degraded", "ef-bad"),
    Segment("enrolled", "enrolled", "ef-muted"),
    Segment("awaiting_approval", "awaiting approval", "ef-warn"),
]
"""Fleet by state; decommissioned and rejected devices are history, not the fleet."""
ONLINE = [
    Segment("online", "online", "ef-ok"),
    Segment("degraded", "degraded", "ef-bad"),
    Segment("offline", "offline", "ef-warn"),
]
OUTCOMES = [
    Segment("succeeded", "succeeded", "ef-ok"),
    Segment("failed", "failed", "ef-bad"),
    Segment("updating", "updating", "ef-active"),
    Segment("skipped", "skipped", "ef-warn"),
    Segment("reverted", "reverted", "ef-other"),
    Segment("pending", "pending", "ef-muted"),
]
DEVICE_METRICS = {
    "p95_ms": ("Inference p95", "ms", 1.0),
    "error_rate": ("Inference errors", "%", 100.0),
    "buffer_depth": ("Results waiting on the device", "", 1.0),
    "buffer_drops": ("Results dropped by the device (total)", "", 1.0),
}


def _frame(points: Sequence[Any]) -> tuple[list[datetime], timedelta]:
    if not points:
        return [], timedelta(minutes=1)
    return [p.start for p in points], points[0].end - points[0].start


def results_chart(
    points: Sequence[ResultBucket], *, title: str = "Results stored", tz: tzinfo = UTC
) -> Markup:
    starts, step = _frame(points)
    values: list[float | None] = [float(p.results) for p in points]
    if not any(values):
        values = [None] * len(points)  # nothing stored in the whole range: say so
    return time_chart(title, starts, step, [Line("results", values)], area=True, tz=tz)


def health_chart(
    points: Sequence[StatusBucket], *, title: str = "Devices reporting", tz: tzinfo = UTC
) -> Markup:
    """Healthy and unhealthy devices per bucket; a gap where none reported."""
    starts, step = _frame(points)
    lines = [
        Line("healthy", [float(p.healthy) if p.reporting else None for p in points], "ef-ok"),
        Line("unhealthy", [float(p.unhealthy) if p.reporting else None for p in points], "ef-bad"),
    ]
    return time_chart(title, starts, step, lines, area=True, tz=tz)


def latency_chart(
    points: Sequence[StatusBucket], *, title: str = "Inference p95", tz: tzinfo = UTC
) -> Markup:
    """The median and the highest of the devices' p95 per bucket."""
    starts, step = _frame(points)
    lines = [
        Line("median", [p.p95_median_ms for p in points], "ef-series-1"),
        Line("max", [p.p95_max_ms for p in points], "ef-series-2"),
    ]
    return time_chart(title, starts, step, lines, unit="ms", tz=tz)


def _device_values(points: Sequence[DeviceBucket], metric: str) -> list[float | None]:
    if metric not in DEVICE_METRICS:
        raise ValueError(f"unknown device metric {metric!r}; one of {', '.join(DEVICE_METRICS)}")
    scale = DEVICE_METRICS[metric][2]
    return [None if (v := getattr(p, metric)) is None else v * scale for p in points]


def device_chart(
    points: Sequence[DeviceBucket],
    metric: str,
    *,
    title: str | None = None,
    tz: tzinfo = UTC,
) -> Markup:
    """One device's ``p95_ms``, ``error_rate`` (in %), ``buffer_depth`` or
    ``buffer_drops`` per bucket (the worst of the bucket; drops: the last count)."""
    values = _device_values(points, metric)
    name, unit, _ = DEVICE_METRICS[metric]
    starts, step = _frame(points)
    return time_chart(title or name, starts, step, [Line(name, values)], unit=unit, tz=tz)


def device_sparkline(
    points: Sequence[DeviceBucket], metric: str, *, css: str = "ef-series-1"
) -> Markup:
    name, unit, _ = DEVICE_METRICS.get(metric, (metric, "", 1.0))
    return sparkline(name, _device_values(points, metric), unit=unit, css=css)


def rollout_chart(progress: RolloutProgress, *, title: str | None = None) -> Markup:
    """Each wave's devices by outcome, a bar per wave."""
    bars = [Bar(f"Wave {w.number} ({w.step}, {w.state})", w.counts) for w in progress.waves]
    heading = title or (
        f"Rollout {progress.rollout_id}: {progress.profile} to revision {progress.revision}, "
        f"{progress.state}"
    )
    return stacked_bars(heading, bars, OUTCOMES)


def fleet_states_chart(health: FleetHealth, *, title: str = "Devices by state") -> Markup:
    return stacked_bars(title, [Bar("All sites", health.by_state)], DEVICE_STATES)


def sites_chart(
    health: FleetHealth, *, limit: int = 12, title: str = "Sites: online, degraded, offline"
) -> Markup:
    """A bar per site, the sites with the most devices offline or degraded first (at most
    ``limit``: a thousand bars read as none), then by name."""
    ranked = sorted(
        (h for h in health.sites if h.devices),
        key=lambda h: (-(h.offline + h.degraded), h.site),
    )
    if len(ranked) > limit:
        title = f"{title} ({limit} of {len(ranked)} sites, most troubled first)"
    bars = [
        Bar(h.site, {"online": h.online, "degraded": h.degraded, "offline": h.offline})
        for h in ranked[:limit]
    ]
    return stacked_bars(title, bars, ONLINE)
