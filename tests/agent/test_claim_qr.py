"""The QR code a device shows for its claim: zbar reads the PNG (with the code drawn
under the symbol) and the terminal's text blocks alike, and the font draws every
character a confirmation code can hold."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.agent import qrimage
from edgefleet.controller.services.claims import CODE_ALPHABET

URL = "https://fleet.example.com:8443/console/claims/clm-0123456789abcdef"


def zbar(image: object) -> list[str]:
    try:
        from pyzbar.pyzbar import decode
    except ImportError as exc:  # pragma: no cover - the message is the point
        pytest.skip(f"pyzbar or libzbar0 is missing ({exc}): pip install pyzbar, apt libzbar0")
    return [s.data.decode() for s in decode(image)]


def test_the_png_reads_as_the_url_and_carries_the_code_under_the_symbol() -> None:
    from PIL import Image

    dark = qrimage.matrix(URL)
    image = Image.open(io.BytesIO(qrimage.png(dark, "K7M2QX")))
    assert zbar(image) == [URL]
    side = (len(dark) + 2 * qrimage.QUIET_ZONE) * qrimage.MODULE_PX
    assert image.size[0] == side and image.size[1] > side + 7 * qrimage.GLYPH_PX
    caption = image.crop((0, side, side, image.size[1]))
    assert caption.getextrema() == (0, 255), "the code is drawn in dark on light"
    bare = Image.open(io.BytesIO(qrimage.png(dark)))
    assert bare.size == (side, side) and zbar(bare) == [URL]


def test_the_terminal_blocks_read_as_the_url() -> None:
    """Each character is two modules (upper, lower half); drawn halves are light."""
    from PIL import Image

    lines = qrimage.terminal(qrimage.matrix(URL)).splitlines()
    light = {" ": (0, 0), "▄": (0, 1), "▀": (1, 0), "█": (1, 1)}
    scale = 6
    image = Image.new("L", (len(lines[0]) * scale, 2 * len(lines) * scale), 0)
    for y, line in enumerate(lines):
        for x, ch in enumerate(line):
            for half, on in enumerate(light[ch]):
                if on:
                    box = (x * scale, (2 * y + half) * scale)
                    image.paste(255, (*box, box[0] + scale, box[1] + scale))
    assert zbar(image) == [URL]


def test_the_font_draws_every_character_of_a_confirmation_code() -> None:
    assert set(qrimage.FONT) == set(CODE_ALPHABET)
    for glyph in qrimage.FONT.values():
        assert len(glyph) == 7 and all(len(row) == 5 and set(row) <= {"#", "."} for row in glyph)
    assert len({g for g in qrimage.FONT.values()}) == len(qrimage.FONT), "no two glyphs alike"


def test_the_child_process_writes_the_png_and_prints_the_blocks(tmp_path: Path) -> None:
    target = tmp_path / "claim.png"
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.agent.qrimage", URL, "ABC234", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == qrimage.terminal(qrimage.matrix(URL)) + "\n"
    assert target.read_bytes() == qrimage.png(qrimage.matrix(URL), "ABC234")
