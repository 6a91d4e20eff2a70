"""The controller's one settings object.

Sources, strongest first: flags (passed in by the CLI), ``EDGEFLEET_*`` environment
variables, then one YAML config file (``EDGEFLEET_CONFIG`` or ``--config``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


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
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86400)
    device_cert_days: int = Field(default=90, ge=1, le=3650)
    clock_tolerance_seconds: int = 2 * 3600
    assertion_leeway_seconds: int = 60
    max_body_bytes: int = 64 * 1024
    max_inflight_requests: int = 512
    """Above this many requests in flight a worker answers 503 with Retry-After."""
    last_seen_flush_seconds: float = 2.0
    bootstrap_admin_token: str | None = None
    """First admin's API token (e.g. from a Kubernetes Secret); printed once when unset."""
    log_level: str = "info"

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
