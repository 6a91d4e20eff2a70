"""A QR code as a device shows it: text blocks for a terminal, and a PNG with the
confirmation code drawn under the symbol, for a screen.

Only a device showing a claim needs this, and the daemon runs it as a child process
(``python -m edgefleet.agent.qrimage URL CODE PNG``), so that ``qrcode`` (and Pillow,
which ``qrcode`` imports wherever it finds it) never stays in the daemon's memory once
the device is enrolled and idle. The PNG is written with ``zlib`` and ``struct`` and
the code drawn with a 5x7 pixel font: the device needs neither Pillow nor PyPNG.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

QUIET_ZONE = 4
"""Modules of light around the symbol, as ISO/IEC 18004 asks."""
MODULE_PX = 8
GLYPH_PX = 7
"""Size of one font pixel: a 6-character code is 245 px wide, 49 px tall."""
DARK, LIGHT = 0, 255

FONT: dict[str, tuple[str, ...]] = {
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}
"""The confirmation codes' alphabet (``services/claims.py``: no 0/O, 1/I/L, U)."""
_UNKNOWN = ("#####",) + ("#...#",) * 5 + ("#####",)


def matrix(data: str) -> list[list[bool]]:
    """The smallest symbol at error correction M holding ``data``, dark modules True,
    without its quiet zone."""
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M

    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=0)
    code.add_data(data)
    code.make(fit=True)
    return [[bool(m) for m in row] for row in code.modules]


def terminal(dark: list[list[bool]]) -> str:
    """The symbol in half blocks, two modules a character cell, light modules drawn (a
    terminal is usually dark), quiet zone included: scannable off most screens."""
    side = len(dark) + 2 * QUIET_ZONE
    pad = [False] * side

    def at(rows: list[list[bool]], y: int) -> list[bool]:
        if QUIET_ZONE <= y < QUIET_ZONE + len(rows):
            return [False] * QUIET_ZONE + rows[y - QUIET_ZONE] + [False] * QUIET_ZONE
        return pad

    lines = []
    for y in range(0, side, 2):
        top, bottom = at(dark, y), at(dark, y + 1) if y + 1 < side else [True] * side
        lines.append(
            "".join(
                " ▄▀█"[(not t) * 2 + (not b)]  # light modules are the drawn ones
                for t, b in zip(top, bottom, strict=True)
            )
        )
    return "\n".join(lines)


def png(dark: list[list[bool]], caption: str = "") -> bytes:
    """An 8-bit greyscale PNG of the symbol, with ``caption`` drawn large under it."""
    quiet = QUIET_ZONE * MODULE_PX
    width = len(dark) * MODULE_PX + 2 * quiet
    rows: list[bytes] = [bytes([LIGHT]) * width] * quiet
    for line in dark:
        pixels = bytearray([LIGHT]) * quiet
        for module in line:
            pixels += bytes([DARK if module else LIGHT]) * MODULE_PX
        pixels += bytes([LIGHT]) * quiet
        rows.extend([bytes(pixels)] * MODULE_PX)
    rows.extend([bytes([LIGHT]) * width] * quiet)
    if caption:
        rows.extend(_text(caption, width))
        rows.extend([bytes([LIGHT]) * width] * quiet)
    return _encode(width, rows)


def _text(caption: str, width: int) -> list[bytes]:
    """Rows of ``caption`` in the 5x7 font, centred (cut to the width if it must be)."""
    px = GLYPH_PX
    glyphs = [FONT.get(ch.upper(), _UNKNOWN) for ch in caption]
    text_w = len(glyphs) * 6 * px - px
    left = max(0, (width - text_w) // 2)
    rows = []
    for y in range(7):
        line = bytearray([LIGHT]) * width
        x = left
        for glyph in glyphs:
            for bit in glyph[y]:
                if bit == "#" and x + px <= width:
                    line[x : x + px] = bytes([DARK]) * px
                x += px
            x += px
        rows.extend([bytes(line)] * px)
    return rows


def _encode(width: int, rows: list[bytes]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, len(rows), 8, 0, 0, 0, 0)  # 8-bit greyscale
    raw = b"".join(b"\0" + row for row in rows)  # filter type 0 on every row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def main(argv: list[str]) -> int:
    """``URL CODE PNG``: write the PNG (atomically), print the terminal rendering."""
    from edgefleet.agent.files import atomic_write

    url, code, target = argv
    dark = matrix(url)
    atomic_write(Path(target), png(dark, code))
    sys.stdout.write(terminal(dark) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
