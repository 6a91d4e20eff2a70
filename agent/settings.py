"""Every setting of the agent, in one place.

Sources, strongest first: command-line flags, ``EDGEFLEET_AGENT_*`` environment
variables, the YAML config file (``--config`` or ``EDGEFLEET_AGENT_CONFIG``),
then the defaults below. Each setting has the same name everywhere:
``--state-dir`` / ``EDGEFLEET_AGENT_STATE_DIR`` / ``state_dir:``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError

ENV_PREFIX = "EDGEFLEET_AGENT_"
DEFAULT_STATE_DIR = Path("/var/lib/edgefleet/agent")
REGISTRATION_SEARCH_PATH = (
    Path("/etc/edgefleet/registration.yaml"),
    Path("/boot/edgefleet/registration.yaml"),
    Path("/boot/firmware/edgefleet/registration.yaml"),  # Raspberry Pi OS 12 mounts FAT here
)
"""Where the registration file is looked for when no flag or env var names it:
``/etc`` for images built with it, ``/boot`` for the FAT partition a person can
write from any laptop."""

LOG_LEVELS = ("debug", "info", "warning", "error")
MODES = ("direct", "k3s")


@dataclass(frozen=True)
class Settings:
    registration: Path | None = None
    """The registration file; None means "search REGISTRATION_SEARCH_PATH"."""
    qr_payload: str | None = None
    """A scanned QR enrolment label (``HTTPS://HOST:PORT/E/CODE#PIN``), instead of a
    registration file (see ``agent/qrpayload.py``)."""
    state_dir: Path = DEFAULT_STATE_DIR
    serial: str | None = None
    hardware_id: str | None = None
    log_level: str = "info"
    once: bool = False
    backoff_base: float = 1.0
    """First retry waits up to this long (seconds); doubles per failure."""
    backoff_cap: float = 60.0
    """Longest wait between retries of a transient failure."""
    token_backoff_cap: float = 300.0
    """Longest wait between enrolment retries the controller refused for good
    (bad, expired, revoked or exhausted token): slow, but never giving up."""
    http_timeout: float = 15.0
    socket_dir: Path | None = None
    """Where the inference runners' Unix sockets go (applications call them there);
    default ``<state_dir>/run``. A socket path may not exceed 107 bytes."""
    registry_mirrors: tuple[str, ...] = ()
    """Base URLs of the site's registry mirrors (``http://mirror.local:5000``), tried
    before the model's own registry; comma-separated in the environment."""
    model_threads: int = 1
    """onnxruntime compute threads per model."""
    slot_images: tuple[tuple[str, Path], ...] = ()
    """Slots on block devices or image files, ``A=/dev/mmcblk0p5,B=/dev/mmcblk0p6``; empty
    keeps the slots in folders under the state directory (the default)."""
    mode: str = "direct"
    """``direct`` reads the desired state from the device API; ``k3s`` (the DaemonSet)
    reads the ConfigMap the site's Flux or Argo CD applied (``agent/k3s/``)."""
    service_port: int = 8080
    """K3s mode: the port of the runner's Service in the agent's namespace."""
    service_selector: str = "app.kubernetes.io/name=edgefleet-agent"
    """K3s mode: the agent pods' labels, ``k=v,k=v``, that the runner's Service selects."""
    node_name: str | None = None
    """K3s mode: the node the pod runs on (the chart sets it from ``spec.nodeName``),
    reported in the inventory so that the device's upgrade Plans select that node."""

    @property
    def sockets(self) -> Path:
        return self.socket_dir or self.state_dir / "run"


_CONVERT: dict[str, Any] = {
    "registration": Path,
    "qr_payload": str,
    "state_dir": Path,
    "serial": str,
    "hardware_id": str,
    "log_level": str,
    "once": lambda v: v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes"),
    "backoff_base": float,
    "backoff_cap": float,
    "token_backoff_cap": float,
    "http_timeout": float,
    "socket_dir": Path,
    "registry_mirrors": lambda v: tuple(
        m.strip() for m in (v.split(",") if isinstance(v, str) else v) if m.strip()
    ),
    "model_threads": int,
    "slot_images": lambda v: _slot_images(v),
    "mode": lambda v: str(v).lower(),
    "service_port": int,
    "service_selector": str,
    "node_name": str,
}


def _slot_images(value: Any) -> tuple[tuple[str, Path], ...]:
    """``A=PATH,B=PATH`` (or a mapping in the config file) -> ((A, path), (B, path))."""
    pairs = (
        value.items()
        if isinstance(value, Mapping)
        else (item.split("=", 1) for item in str(value).split(",") if item.strip())
    )
    found = {str(k).strip(): Path(str(v).strip()) for k, v in pairs}
    if sorted(found) != ["A", "B"]:
        raise ValueError("name both slots, e.g. A=/dev/mmcblk0p5,B=/dev/mmcblk0p6")
    return tuple(sorted(found.items()))


def _load_config_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    unknown = sorted(set(data) - set(_CONVERT))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_CONVERT))}"
        )
    return data


def load_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> Settings:
    """Merge flags (None = not given), environment and config file into Settings."""
    env = os.environ if env is None else env
    if config is None and env.get(ENV_PREFIX + "CONFIG"):
        config = Path(env[ENV_PREFIX + "CONFIG"])
    merged: dict[str, Any] = _load_config_file(config) if config else {}
    for name in _CONVERT:
        if env.get(ENV_PREFIX + name.upper()):
            merged[name] = env[ENV_PREFIX + name.upper()]
        if flags.get(name) is not None:
            merged[name] = flags[name]
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name in merged and merged[f.name] is not None:
            try:
                values[f.name] = _CONVERT[f.name](merged[f.name])
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"setting {f.name} has an unusable value {merged[f.name]!r}: {exc}"
                ) from exc
    settings = Settings(**values)
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if settings.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {settings.mode!r}")
    return settings


def registration_candidates(settings: Settings) -> list[Path]:
    """The files tried, in order, for the registration: the setting, else the search path."""
    if settings.registration is not None:
        return [settings.registration]
    return list(REGISTRATION_SEARCH_PATH)
