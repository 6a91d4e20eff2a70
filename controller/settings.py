"""The controller's one settings object.

Sources, strongest first: flags (passed in by the CLI), ``EDGEFLEET_*`` environment
variables, then one YAML config file (``EDGEFLEET_CONFIG`` or ``--config``).
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from edgefleet.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid")

    config: Path | None = None
    data_dir: Path = Path(".edgefleet")
    database_url: str | None = None
    """SQLite file in the data dir when unset; PostgreSQL for production and replicas."""
    host: str = "127.0.0.1"
    port: int = 8443
    listen_fd: int | None = None
    """An inherited, already listening socket to serve on instead of binding host:port."""
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    db_threads: int | None = Field(default=None, ge=1, le=200)
    """Threads per worker for blocking (database) work. Unset: 2 on SQLite (one writer at
    a time anyway), 4 on PostgreSQL. More threads mostly buy GIL contention on a small
    machine; raise it when the database is far away (each round trip then waits longer)."""
    public_url: str | None = None
    """The URL devices use; goes into registration files. Defaults to https://host:port."""
    server_names: list[str] = ["localhost", "127.0.0.1"]
    controller_id: str | None = None
    """Audience of device assertions; generated once into the data dir when unset."""

    device_interval_seconds: int = Field(default=10, ge=1, le=86400)
    approval_retry_seconds: int = Field(default=5, ge=1)
    claim_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 86400)
    """How long a QR claim shown by a device waits for a person before it expires."""
    claim_poll_seconds: int = Field(default=20, ge=0, le=60)
    """How long the controller holds a device's claim poll open waiting for a decision
    (long polling: an approval reaches the device at once); 0 answers at once."""
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86400)
    device_cert_lifetime: timedelta = Field(default=timedelta(days=90))
    """Seconds or ISO 8601 (P90D); devices renew at two thirds of it."""

    @field_validator("device_cert_lifetime", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        """Environment variables are text: read a bare number as seconds."""
        if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
            return float(value)
        return value

    clock_tolerance_seconds: int = 2 * 3600
    assertion_leeway_seconds: int = 60
    max_body_bytes: int = 64 * 1024
    max_result_body_bytes: int = 2 * 1024 * 1024
    """A result batch as sent (gzipped); unpacked it may be at most 4 MiB."""
    max_inflight_requests: int = 512
    """Above this many requests in flight a worker answers 503 with Retry-After."""
    shed_retry_after_max_seconds: int = Field(default=20, ge=1, le=3600)
    """The longest Retry-After a worker shedding load asks for (it scales with how much
    it sheds). Keep it under three of the devices' intervals, so a shed fleet still
    reports within them: 20 s suits the default 10 s interval."""
    last_seen_flush_seconds: float = 2.0
    status_sample_seconds: int = Field(default=300, ge=1, le=3600)
    """The status history's period (controller/status_samples.py): at most one sample per
    device per period, written behind with last seen. A device reporting less often counts
    only in the periods it reported in. 300 s keeps 10,000 devices' 14 days in about
    6.4 GB on PostgreSQL (159 bytes a sample with its indexes); 60 s takes five times that."""
    status_sample_retention_days: int = Field(default=14, ge=1, le=3650)
    """How long status samples are kept; pruned in the background in small batches."""
    results_retention_days: int | None = Field(default=None, ge=3, le=36500)
    """How long results are kept, by their time (controller/results_retention.py); unset:
    forever. At least 3 days: longer than an agent's buffer holds a result (48 h), so a
    result sent again is never one already deleted (it would be stored twice)."""
    drift_retention_days: int = Field(default=30, ge=1, le=3650)
    """How long devices' drift windows are kept, by their start (controller/services/drift.py):
    10,000 devices with 3 models and hourly windows send 720,000 a day, about 2 KB each."""
    bootstrap_admin_token: str | None = None
    """First admin's API token (e.g. from a Kubernetes Secret); printed once when unset."""
    bootstrap_admin_password: str | None = None
    """First admin's console password (e.g. from a Secret); printed once when unset."""

    # -- the console (controller/console; README "The console") -----------------------
    console_session_seconds: int = Field(default=12 * 3600, ge=60)
    """How long a console login lasts at most."""
    console_idle_seconds: int = Field(default=2 * 3600, ge=60)
    """A console session unused this long ends."""
    login_rate_per_second: float = Field(default=0.2, ge=0)
    login_burst: int = Field(default=10, ge=1)
    """Console logins one client address may try at once; then one per 5 s. Each costs
    a memory-hard hash, so this bounds guessing and the CPU a guesser can burn."""
    log_level: str = "info"

    # -- the fleet repository (controller/gitops; README "Fleet repository") ---------
    gitops_root: Path | None = None
    """Where the local bare repositories live; default ``<data_dir>/gitops``."""
    gitops_applier: Literal["flux", "argocd"] = "flux"
    gitops_repositories: Literal["per-site", "fleet"] = "per-site"
    """One repository per site (a site reads only its own state), or one for the fleet."""
    gitops_remote: str | None = None
    """URL template with ``{site}`` to push to, e.g. https://git.example/fleet/{site}.git."""
    gitops_branch: str = "main"
    gitops_writer: bool = True
    """Write the repositories from this process; off for a replica that must not (it
    then leaves the writing to the replicas that share the repository root)."""
    gitops_wait_seconds: float = Field(default=10.0, ge=0)
    """How long an operator's change waits for its commit before answering ``pending``."""
    gitops_debounce_seconds: float = Field(default=2.0, ge=0)
    """Enrolments within this window make one commit (a site powering on at once)."""
    gitops_resync_seconds: float = Field(default=300.0, ge=0)
    """Write the whole fleet again this often (0: only at start); no commit if unchanged."""

    # -- wave rollouts (controller/rollouts/driver.py) ---------------------------------
    rollout_engine: bool = True
    """This process may drive rollouts; one worker of one replica does at a time."""
    rollout_lease_seconds: float = Field(default=15.0, gt=0.5, le=600)
    """How long the driver's lease lasts: a dead driver's successor takes over after this."""
    rollout_tick_seconds: float = Field(default=5.0, gt=0, le=600)
    """The engine's timer: bakes, windows and deadlines are checked at least this often."""

    # -- rate limits (controller/ratelimit.py; README "Rate limits") ---------------------
    # Per client address and per worker process, on the two endpoints open to anyone.
    # Defaults: a site whose devices all power on at once behind one NAT address (and
    # keep asking while they await approval) is never throttled; a script is, to tens
    # of requests a second. A rate of 0 turns that limit off.
    enrol_rate_per_second: float = Field(default=20.0, ge=0)
    enrol_burst: int = Field(default=200, ge=1)
    """Enrolments one address may send at once before the rate applies."""
    token_rate_per_second: float = Field(default=20.0, ge=0)
    token_burst: int = Field(default=200, ge=1)
    """Access-token requests one address may send at once (a site back from a power cut)."""
    claim_rate_per_second: float = Field(default=0.5, ge=0)
    claim_burst: int = Field(default=30, ge=1)
    """New QR claims one address may create at once. Lower than enrolment: every claim is
    a row a person sees in the console, and a device makes one, then polls it."""
    trusted_proxies: list[str] = []
    """CIDRs of reverse proxies in front of the controller. Only a request whose direct
    peer is one of them has its X-Forwarded-For read (from the right, skipping trusted
    hops) to find the client; from anyone else the header is ignored."""

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP network; write CIDRs such as 10.0.0.0/8 or 127.0.0.1"
                ) from None
        return networks

    # -- registry tokens (controller/registry_tokens.py; README "Registry tokens") -------
    # Must equal the registry's auth.token block: `edgefleet controller registry-config`.
    registry_service: str = "edgefleet-registry"
    """The registry's ``auth.token.service``: the audience of every registry token."""
    registry_token_issuer: str = "edgefleet"
    """The registry's ``auth.token.issuer``: the issuer of every registry token."""
    registry_token_ttl_seconds: int = Field(default=300, ge=60, le=86400)
    """Lifetime of registry tokens; registry clients ask again when theirs expires."""
    registry_insecure: list[str] = []
    """Registries (``host[:port]``) reached over plain HTTP, by the controller resolving
    tags and by devices pulling; every other registry is HTTPS."""

    # -- secrets at rest (controller/pki/certs.py; README "Key rotation and secrets") ----
    key_passphrase: SecretStr | None = None
    """Encrypts the PKI private keys (PKCS#8, best available encryption) when set; keys
    written before stay plain until `edgefleet keys encrypt`."""
    key_passphrase_file: Path | None = None
    """The passphrase in a file instead (a Kubernetes Secret mounted as a file); its
    trailing newline is ignored."""

    def key_passphrase_bytes(self) -> bytes | None:
        """The PKI keys' passphrase, or None when the keys are kept plain."""
        if self.key_passphrase is not None and self.key_passphrase_file is not None:
            raise ConfigError(
                "set EDGEFLEET_KEY_PASSPHRASE or EDGEFLEET_KEY_PASSPHRASE_FILE, not both"
            )
        if self.key_passphrase_file is not None:
            try:
                text = self.key_passphrase_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the key passphrase file {self.key_passphrase_file}: {exc}"
                ) from exc
        elif self.key_passphrase is not None:
            text = self.key_passphrase.get_secret_value()
        else:
            return None
        if not text:
            raise ConfigError("the key passphrase is empty; set one or unset the setting")
        return text.encode()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = init_settings.init_kwargs.get("config") or os.environ.get("EDGEFLEET_CONFIG")  # type: ignore[attr-defined]
        if path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'edgefleet.db').resolve()}"

    @property
    def effective_db_threads(self) -> int:
        if self.db_threads is not None:
            return self.db_threads
        return 2 if self.effective_database_url.startswith("sqlite") else 4

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"https://{self.host}:{self.port}"


def load_settings(**overrides: Any) -> Settings:
    """Build settings; ``overrides`` are flags, dropped when None so env and file apply."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
