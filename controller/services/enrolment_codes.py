"""Enrolment codes: the short secret of a QR label, made once and kept only as a hash.

A code is another name for one registration token: redeeming it at ``POST /enrol``
goes through the token's own checks (expiry, uses, revocation, allow-lists,
approval). It carries 50 bits, not a token secret's 256, because it must fit a
small QR code; that is ample against online guessing (2^49 tries on average, each a
round trip), and a plain SHA-256 at rest keeps it out of a database dump's plain
text. A QR token asks for approval unless the operator says otherwise, so a code
read off a stolen label enrols nothing without a person.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from edgefleet.enrolcode import CODE_ALPHABET, CODE_LENGTH, build_payload


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def code_hash(code: str) -> str:
    """What the database keeps; ``code`` must already be normalised."""
    return hashlib.sha256(f"edgefleet-enrolment-code:{code}".encode()).hexdigest()


def qr_answer(
    controller_url: str,
    code: str,
    pins: list[str],
    *,
    site: str,
    kid: str,
    expires_at: str | None,
    require_approval: bool,
) -> dict[str, Any]:
    """The payload, its QR facts and the printable label (PNG as base64, SVG)."""
    import base64

    from edgefleet.controller import qr

    payload = build_payload(controller_url, code, pins)
    symbol = qr.encode(payload)
    label = qr.Label(
        title=site,
        lines=[
            f"kid {kid}",
            f"expires {expires_at[:16].replace('T', ' ')} UTC" if expires_at else "never expires",
            "approval required" if require_approval else "enrols without approval",
        ],
    )
    return {
        "payload": payload,
        "code": code,
        "version": symbol.version,
        "modules": symbol.modules,
        "error_correction": symbol.error_correction,
        "segments": symbol.segments,
        "png_base64": base64.b64encode(qr.label_png(symbol, label)).decode(),
        "svg": qr.label_svg(symbol, label),
    }
