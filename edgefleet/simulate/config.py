"""The simulator's settings, checked before anything is sent to the controller."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.errors import ConfigError


@dataclass(frozen=True)
class Mix:
    """Fractions of the fleet per behaviour; each device has at most one, the rest are
    plain devices that report on every interval."""

    offline: float = 0.0
    flapping: float = 0.0
    slow: float = 0.0
    uploading: float = 0.0
    failing_updates: float = 0.0

    def items(self) -> list[tuple[str, float]]:
        return [
            ("offline", self.offline),
            ("flapping", self.flapping),
            ("slow", self.slow),
            ("uploading", self.uploading),
            ("failing_updates", self.failing_updates),
        ]


@dataclass(frozen=True)
class SimConfig:
    url: str
    token: str
    devices: int
    interval: float
    duration: float
    ca_file: Path | None = None
    site: str = "sim"
    profile: str | None = None
    """Profile the registration token binds: the devices follow its revisions."""
    mix: Mix = field(default_factory=Mix)
    seed: int = 0
    connections: int = 64
    """Size of the shared HTTPS pool; 0 opens a fresh connection for every request."""
    enrol_concurrency: int = 16
    timeout: float = 10.0
    batch: int = 10
    """Results per upload of an uploading device."""
    slow_delay: float = 1.0
    """A slow device waits up to this long before each request and before reading each
    answer."""
    bucket: float = 1.0
    """Seconds per point of the time series."""
    warmup: float | None = None
    """Seconds after enrolment before the steady state the report judges; None: two
    intervals (:func:`warmup_seconds`)."""
    controller_pid: int | None = None
    outage_at: float | None = None
    """Seconds into the run (after enrolment) when every device stops reporting and its
    connections are dropped: a reconnect storm. None: no outage."""
    outage_for: float = 30.0
    """How long the outage lasts; then every device comes back at the same instant."""
    storm_connections: int = 0
    """The pool the fleet returns on, one new connection per request in flight up to
    this many; 0: as many as the file descriptor limit allows (:func:`storm_pool`)."""
    storm_reauth: bool = False
    """Returning devices ask for a new access token first (an outage longer than a
    token's life), the costly path: a signature check per device."""


FDS_KEPT = 512
"""File descriptors the simulator keeps for itself and its other pools."""


def storm_pool(cfg: SimConfig) -> int:
    """Connections the returning fleet may open at once: ``--storm-connections``, or one
    per device up to what the soft file descriptor limit leaves (``ulimit -n``)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = max(1, soft - FDS_KEPT - cfg.connections) if soft != resource.RLIM_INFINITY else None
    wanted = cfg.storm_connections or cfg.devices
    return min(wanted, room) if room is not None else wanted


WARMUP_INTERVALS = 2
"""The default warm-up: by two intervals after enrolment every device has exchanged its
first token and had a full status stored, when the controller keeps up with that."""


def warmup_seconds(cfg: SimConfig) -> float:
    """Seconds after enrolment when the steady state begins."""
    return WARMUP_INTERVALS * cfg.interval if cfg.warmup is None else cfg.warmup


def check(cfg: SimConfig) -> None:
    """Raise ConfigError, naming the flag, for anything the run cannot start with."""
    if not cfg.url.startswith("https://"):
        raise ConfigError(f"--url {cfg.url!r} must start with https://")
    if not cfg.token:
        raise ConfigError(
            "no operator token: pass --token or set EDGEFLEET_TOKEN (an operator or admin "
            "API token; the simulator creates its own registration token with it)"
        )
    if cfg.devices < 1:
        raise ConfigError(f"--devices must be at least 1 (got {cfg.devices})")
    if cfg.interval <= 0:
        raise ConfigError(f"--interval must be more than 0 seconds (got {cfg.interval:g})")
    if cfg.duration <= 0:
        raise ConfigError(f"--duration must be more than 0 seconds (got {cfg.duration:g})")
    for name, value in cfg.mix.items():
        if not 0 <= value <= 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} is a fraction of the fleet, 0 to 1 (got {value:g})")
    total = sum(value for _, value in cfg.mix.items())
    if total > 1 + 1e-9:
        raise ConfigError(
            f"the behaviour fractions add up to {total:g}, more than the whole fleet; each "
            "device has at most one behaviour (--offline, --flapping, --slow, --uploading, "
            "--failing-updates)"
        )
    if cfg.connections < 0:
        raise ConfigError("--connections must be 0 (a new connection per request) or more")
    if cfg.enrol_concurrency < 1:
        raise ConfigError("--enrol-concurrency must be at least 1")
    if cfg.timeout <= 0:
        raise ConfigError("--timeout must be more than 0 seconds")
    if not 1 <= cfg.batch <= 5000:
        raise ConfigError("--batch must be 1 to 5000 results per upload")
    if cfg.bucket <= 0:
        raise ConfigError("--bucket must be more than 0 seconds")
    if cfg.warmup is not None and not 0 <= cfg.warmup < cfg.duration:
        raise ConfigError(
            f"--warmup is seconds after enrolment before the steady state, 0 to --duration "
            f"(got {cfg.warmup:g})"
        )
    if cfg.ca_file is not None and not cfg.ca_file.is_file():
        raise ConfigError(f"--ca-file {cfg.ca_file} does not exist or is not a file")
    if cfg.outage_at is not None:
        if not 0 <= cfg.outage_at < cfg.duration:
            raise ConfigError(
                f"--outage-at is seconds into the run, 0 to --duration (got {cfg.outage_at:g})"
            )
        if cfg.outage_for <= 0:
            raise ConfigError(f"--outage-for must be more than 0 seconds (got {cfg.outage_for:g})")
        if cfg.outage_at + cfg.outage_for >= cfg.duration:
            raise ConfigError(
                f"the fleet comes back at {cfg.outage_at + cfg.outage_for:g} s "
                f"(--outage-at + --outage-for), after the run's end at {cfg.duration:g} s: "
                "raise --duration"
            )
    if cfg.storm_connections < 0:
        raise ConfigError("--storm-connections must be 0 (one per device) or more")
    if cfg.controller_pid is not None and not Path(f"/proc/{cfg.controller_pid}").exists():
        raise ConfigError(f"--controller-pid {cfg.controller_pid}: no such process")
