"""QR symbols and printable labels (PNG with Pillow, SVG by hand) for enrolment codes.

A label is the symbol with its quiet zone on the left and the site name, key id and
expiry beside it, sized for a 300 dpi label printer: a module is 10 px (0.85 mm), so
a version 5 symbol is 38 mm square, comfortably read by a phone or a device camera
from a hand's length. Error correction M (15% of the symbol may be lost): a URL
sized code that still reads through a scuff or a fold; Q would cost one version.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import qrcode
from qrcode.constants import ERROR_CORRECT_M
from qrcode.util import MODE_8BIT_BYTE, MODE_ALPHA_NUM, MODE_NUMBER

QUIET_ZONE = 4
"""Modules of white around the symbol, as ISO/IEC 18004 asks."""
MODULE_PX = 10
DPI = 300
MM_PER_MODULE = 25.4 * MODULE_PX / DPI
MIN_SEGMENT = 8
"""Shortest run worth its own alphanumeric segment (a switch costs ~25 bits, a
character saves 2.5)."""
_MODE_NAMES = {MODE_NUMBER: "numeric", MODE_ALPHA_NUM: "alphanumeric", MODE_8BIT_BYTE: "byte"}


@dataclass(frozen=True)
class Symbol:
    payload: str
    version: int
    modules: int
    """Modules per side, without the quiet zone (17 + 4 x version)."""
    error_correction: str
    segments: list[str]
    """How the payload was packed, e.g. ``["alphanumeric:35", "byte:1", ...]``."""
    dark: list[list[bool]] = field(repr=False)


@dataclass(frozen=True)
class Label:
    title: str
    lines: list[str]


def encode(payload: str) -> Symbol:
    """The smallest symbol at error correction M that holds ``payload``."""
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=QUIET_ZONE)
    code.add_data(payload, optimize=MIN_SEGMENT)
    code.make(fit=True)
    return Symbol(
        payload=payload,
        version=code.version,
        modules=code.modules_count,
        error_correction="M",
        segments=[f"{_MODE_NAMES.get(d.mode, d.mode)}:{len(d.data)}" for d in code.data_list],
        dark=[[bool(m) for m in row] for row in code.modules],
    )


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# -- PNG ---------------------------------------------------------------------------


def label_png(symbol: Symbol, label: Label) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    side = (symbol.modules + 2 * QUIET_ZONE) * MODULE_PX
    title_font = ImageFont.load_default(size=side // 9)
    line_font = ImageFont.load_default(size=side // 16)
    title = _fit(label.title, 40)
    texts = [(title, title_font), *((_fit(t, 48), line_font) for t in label.lines)]
    text_w = max(int(font.getlength(t)) for t, font in texts)
    width = side + text_w + 2 * QUIET_ZONE * MODULE_PX

    img = Image.new("L", (width, side), 255)
    draw = ImageDraw.Draw(img)
    q = QUIET_ZONE * MODULE_PX
    for y, row in enumerate(symbol.dark):
        for x, dark in enumerate(row):
            if dark:
                x0, y0 = q + x * MODULE_PX, q + y * MODULE_PX
                draw.rectangle((x0, y0, x0 + MODULE_PX - 1, y0 + MODULE_PX - 1), fill=0)
    x = side
    y = q
    for i, (t, font) in enumerate(texts):
        draw.text((x, y), t, fill=0, font=font)
        y += int(font.size * (1.5 if i == 0 else 1.35))
    out = io.BytesIO()
    img.save(out, format="PNG", dpi=(DPI, DPI), optimize=True)
    return out.getvalue()


# -- SVG ---------------------------------------------------------------------------


def _dark_path(symbol: Symbol) -> str:
    """One path of horizontal runs: a few hundred bytes instead of a rect per module."""
    parts = []
    for y, row in enumerate(symbol.dark):
        x = 0
        while x < len(row):
            if not row[x]:
                x += 1
                continue
            start = x
            while x < len(row) and row[x]:
                x += 1
            parts.append(f"M{start + QUIET_ZONE} {y + QUIET_ZONE}h{x - start}v1h-{x - start}z")
    return "".join(parts)


def label_svg(symbol: Symbol, label: Label) -> str:
    """The same layout in module units; text is estimated at 0.6 em a character."""
    side = symbol.modules + 2 * QUIET_ZONE
    title_size = side / 9
    line_size = side / 16
    title = _fit(label.title, 40)
    lines = [_fit(t, 48) for t in label.lines]
    text_w = max([len(title) * 0.6 * title_size] + [len(t) * 0.6 * line_size for t in lines] + [0])
    width = round(side + text_w + 2 * QUIET_ZONE, 2)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" '
        f'width="{width * MM_PER_MODULE:.2f}mm" height="{side * MM_PER_MODULE:.2f}mm" '
        f'viewBox="0 0 {width} {side}">',
        f"<title>{escape(label.title)}</title>",
        f'<rect width="{width}" height="{side}" fill="#fff"/>',
        f'<path d="{_dark_path(symbol)}" fill="#000" shape-rendering="crispEdges"/>',
        f'<g font-family="DejaVu Sans, Helvetica, Arial, sans-serif" fill="#000" '
        f'transform="translate({side} {QUIET_ZONE})">',
    ]
    y = title_size
    out.append(
        f'<text x="0" y="{y:.2f}" font-size="{title_size:.2f}" font-weight="bold">'
        f"{escape(title)}</text>"
    )
    y += title_size * 0.5
    for t in lines:
        y += line_size * 1.35
        out.append(f'<text x="0" y="{y:.2f}" font-size="{line_size:.2f}">{escape(t)}</text>')
    out += ["</g>", "</svg>", ""]
    return "\n".join(out)
