"""The run as a PNG: latency percentiles (ms) above, throughput (requests/s) and errors
below, over time. Drawn with Pillow (already a dependency of the QR codes) rather than
matplotlib, which would add tens of megabytes for two line charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError

WIDTH, HEIGHT = 1000, 640
MARGIN_L, MARGIN_R, MARGIN_T, GAP = 70, 20, 36, 50
COLOURS = {
    "p50_ms": (46, 125, 50),
    "p95_ms": (239, 108, 0),
    "p99_ms": (198, 40, 40),
    "per_second": (21, 101, 192),
    "errors": (198, 40, 40),
    "controller_cpu_pct": (120, 120, 120),
}


def _nice_max(value: float) -> float:
    """A round axis top at or above ``value``."""
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10
    for mult in (1, 2, 2.5, 5, 10):
        if value <= step * mult:
            return step * mult
    return value


def draw(report: dict[str, Any], path: Path) -> None:
    """Write the chart of ``report["series"]`` to ``path``."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:  # Pillow comes with qrcode[pil]; say how to get it
        raise ConfigError("--chart needs Pillow: pip install pillow") from exc
    series = report["series"]
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    pen = ImageDraw.Draw(img)
    cfg = report["config"]
    pen.text(
        (MARGIN_L, 8),
        f"edgefleet simulate: {cfg['devices']} devices, {cfg['interval_s']:g} s interval, "
        f"{report['requests_per_second']} req/s, p99 {report['latency']['p99_ms']} ms, "
        f"{report['error_count']} errors",
        fill="black",
    )
    panel_h = (HEIGHT - MARGIN_T - 2 * GAP) // 2
    top = (MARGIN_T, MARGIN_T + panel_h)
    bottom = (MARGIN_T + panel_h + GAP, MARGIN_T + 2 * panel_h + GAP)
    t_max = max((p["t"] for p in series), default=1.0) or 1.0
    _panel(pen, series, top, t_max, ["p50_ms", "p95_ms", "p99_ms"], "latency, ms")
    _panel(pen, series, bottom, t_max, ["per_second", "errors"], "requests/s, errors")
    pen.text((WIDTH // 2 - 40, HEIGHT - 22), "seconds from start", fill="black")
    img.save(path, "PNG")


def _panel(
    pen: Any,
    series: list[dict[str, Any]],
    span: tuple[int, int],
    t_max: float,
    keys: list[str],
    title: str,
) -> None:
    y0, y1 = span
    x0, x1 = MARGIN_L, WIDTH - MARGIN_R
    values = [p[k] for p in series for k in keys if p.get(k) is not None]
    v_max = _nice_max(max(values, default=0.0))
    pen.rectangle((x0, y0, x1, y1), outline=(180, 180, 180))
    for i in range(5):
        y = y1 - (y1 - y0) * i / 4
        pen.line((x0, y, x1, y), fill=(235, 235, 235))
        pen.text((4, y - 6), f"{v_max * i / 4:g}", fill=(90, 90, 90))
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        pen.text(
            (x - 10, y1 + 4), f"{t_max * i / 5:.{0 if t_max >= 10 else 1}f}", fill=(90, 90, 90)
        )

    def xy(t: float, v: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * t / t_max, y1 - (y1 - y0) * min(v, v_max) / v_max

    legend_x = x0 + 8
    for key in keys:
        points = [xy(p["t"], p[key]) for p in series if p.get(key) is not None]
        colour = COLOURS[key]
        if len(points) > 1:
            pen.line(points, fill=colour, width=2)
        elif points:
            pen.ellipse(
                (points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2),
                fill=colour,
            )
        pen.text((legend_x, y0 + 4), key, fill=colour)
        legend_x += 90
    pen.text((x1 - 140, y0 + 4), title, fill="black")
