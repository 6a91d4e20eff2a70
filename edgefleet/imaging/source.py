"""The registration file to flash, checked before anything is written."""

from __future__ import annotations

from pathlib import Path

from edgefleet.errors import ConfigError
from edgefleet.wire import Registration

MAX_BYTES = 64 * 1024
"""A registration file is a few hundred bytes; anything this large is the wrong file."""


def read_registration(path: Path) -> tuple[bytes, Registration]:
    """The file's exact bytes (what gets written) and its validated contents.

    Validation is the agent's own parser (:func:`edgefleet.agent.registration.
    parse_registration`: the wire model, an https URL, well-formed pins), so an image
    is never flashed with a file the device would refuse on first boot.
    """
    from edgefleet.agent.registration import parse_registration

    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"registration file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read registration file {path}: {exc}") from exc
    if len(data) > MAX_BYTES:
        raise ConfigError(
            f"registration file {path} has {len(data)} bytes; a registration file is a "
            "few hundred (write one with `edgefleet tokens create --registration FILE`)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"registration file {path} is not UTF-8 text: {exc}") from exc
    return data, parse_registration(text, str(path))
