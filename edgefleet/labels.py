"""``key=value`` labels as people type them, for the CLI and the API alike."""

from __future__ import annotations

from edgefleet.errors import BadRequest


def parse_labels(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"label {item!r} must read key=value", code="bad_label")
        out[key] = value
    return out
