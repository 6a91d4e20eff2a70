"""The registration file flashed into the image: where the controller is and how to trust it."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from edgefleet import safeyaml
from edgefleet.agent.client import parse_controller_url
from edgefleet.errors import ConfigError, TrustError
from edgefleet.signing import check_pin_format
from edgefleet.wire import Registration


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "missing":
            parts.append(f"field {where} is missing")
        elif err["type"] == "extra_forbidden":
            parts.append(f"field {where} is not a registration field")
        else:
            parts.append(f"field {where}: {err['msg']}")
    return "; ".join(parts)


def parse_registration(text: str, source: str) -> Registration:
    """Validate a registration's YAML; every problem names the field to fix."""
    data = safeyaml.load(text, f"registration file {source}")
    if not isinstance(data, dict):
        raise ConfigError(f"registration file {source} must be a YAML mapping")
    try:
        reg = Registration.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"registration file {source}: {_describe(exc)}") from exc
    if not reg.controller_url.startswith("https://"):
        raise ConfigError(
            f"registration file {source}: field controller_url must be an https:// URL, "
            f"got {reg.controller_url!r}"
        )
    try:
        parse_controller_url(reg.controller_url)
    except ConfigError as exc:
        raise ConfigError(f"registration file {source}: field controller_url: {exc}") from exc
    try:
        pins = [check_pin_format(p) for p in reg.root_pins]
    except TrustError as exc:
        raise ConfigError(f"registration file {source}: field root_pins: {exc}") from exc
    return reg.model_copy(
        update={"root_pins": pins, "controller_url": reg.controller_url.rstrip("/")}
    )


def load_registration(candidates: list[Path]) -> tuple[Path, Registration]:
    """The first registration file that exists among ``candidates``, validated."""
    for path in candidates:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read registration file {path}: {exc}") from exc
        return path, parse_registration(text, str(path))
    looked = ", ".join(str(p) for p in candidates)
    raise ConfigError(
        f"no registration file found (looked in: {looked}); pass --registration FILE "
        "or set EDGEFLEET_AGENT_REGISTRATION"
    )
