"""Enrolment from a QR label: its payload stands in for the registration file.

The payload (format in ``edgefleet/enrolcode.py``) names the controller, its root
pins and a short code, which the agent presents at enrolment as ``efq.<CODE>``. The
pins come from the payload alone, exactly as from a flashed registration file. What
the payload leaves out to stay small is the controller id, the audience of the
device's assertions: the enrolment answer names it, over the connection the pins
already verified, and the agent keeps it in ``controller.json`` in its state folder
(written before the device certificate, so an enrolled device always has it) for
every later start with the same payload.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from edgefleet.agent.client import parse_controller_url
from edgefleet.agent.files import read_json, write_json
from edgefleet.enrolcode import parse_payload
from edgefleet.errors import ConfigError
from edgefleet.wire import Registration

CONTROLLER_FILE = "controller.json"
UNKNOWN_CONTROLLER_ID = "(from the enrolment answer)"
"""Stands in for the controller id until the controller has named it."""


def registration_from_payload(payload: str, state_dir: Path) -> Registration:
    """The registration a QR payload amounts to; a malformed payload is a ConfigError."""
    try:
        parsed = parse_payload(payload)
        parse_controller_url(parsed.controller_url)
    except ConfigError as exc:
        raise ConfigError(f"qr_payload: {exc.message}") from exc
    stored = read_json(state_dir / CONTROLLER_FILE) or {}
    known = (
        stored.get("controller_id")
        if stored.get("controller_url") == parsed.controller_url
        else None
    )
    try:
        return Registration(
            controller_url=parsed.controller_url,
            controller_id=known or UNKNOWN_CONTROLLER_ID,
            root_pins=parsed.root_pins,
            token=parsed.credential,
        )
    except ValidationError as exc:
        where = ", ".join(str(e["loc"][0]) for e in exc.errors())
        raise ConfigError(f"qr_payload: its {where} is too long or malformed") from exc


def learn_controller_id(
    state_dir: Path, registration: Registration, controller_id: str | None
) -> Registration:
    """Adopt the controller id an enrolment answer names, if the registration had none."""
    if not controller_id or registration.controller_id != UNKNOWN_CONTROLLER_ID:
        return registration
    write_json(
        state_dir / CONTROLLER_FILE,
        {"controller_url": registration.controller_url, "controller_id": controller_id},
    )
    return registration.model_copy(update={"controller_id": controller_id})
