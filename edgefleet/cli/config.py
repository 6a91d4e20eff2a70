"""Where the CLI finds its controller: flags, then ``EDGEFLEET_*`` env, then one file.

The file (``EDGEFLEET_CLI_CONFIG``, default ``~/.config/edgefleet/cli.yaml``) is written
by ``edgefleet login`` and holds ``url``, ``token`` and ``ca_file``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgefleet.errors import ConfigError


def config_path() -> Path:
    env = os.environ.get("EDGEFLEET_CLI_CONFIG")
    return Path(env) if env else Path.home() / ".config" / "edgefleet" / "cli.yaml"


@dataclass
class CliConfig:
    url: str
    token: str | None
    ca_file: Path | None


def load(url: str | None, token: str | None, ca_file: Path | None) -> CliConfig:
    stored: dict[str, str] = {}
    path = config_path()
    if path.exists():
        try:
            stored = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    url = url or os.environ.get("EDGEFLEET_URL") or stored.get("url")
    if not url:
        raise ConfigError(
            "no controller URL: pass --url, set EDGEFLEET_URL, or run `edgefleet login`"
        )
    token = token or os.environ.get("EDGEFLEET_TOKEN") or stored.get("token")
    ca = ca_file or os.environ.get("EDGEFLEET_CA_FILE") or stored.get("ca_file")
    return CliConfig(url.rstrip("/"), token, Path(ca) if ca else None)


def save(url: str, token: str, ca_file: Path) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"url": url, "token": token, "ca_file": str(ca_file)}, f)
    return path
