"""The profile's health policy, read from ``policies`` (see ``profiles/schema.json``).

    policies:
      health_deadline_seconds: 60      # all checks of one try, together
      max_attempts: 3                  # tries of one revision, crashes included
      health_checks:
        - {type: model_load}
        - {type: probe}
        - {type: latency, p95_ms: 50, samples: 50}
        - {type: http, url: http://127.0.0.1:8080/ready, expect_status: 200, timeout_seconds: 5}
        - {type: exec, command: [/usr/bin/app-selftest], timeout_seconds: 10}

Every check also takes ``timeout_seconds``. With no ``health_checks`` a revision is
checked with ``model_load`` and ``probe``; ``model_load`` runs first whether listed or
not (nothing else can run on a model that did not load).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.errors import ConfigError

DEFAULT_DEADLINE_S = 60.0
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 10
"""More tries than this only delays the rollback of a model that keeps crashing."""

DEFAULT_TIMEOUTS = {"model_load": 30.0, "probe": 10.0, "latency": 30.0, "http": 5.0, "exec": 10.0}


@dataclass(frozen=True)
class CheckSpec:
    """One entry of ``health_checks``; fields beyond ``type`` and ``timeout_seconds``
    are the ones its type reads."""

    type: str
    timeout_seconds: float
    p95_ms: float = 0.0
    samples: int = 50
    url: str = ""
    expect_status: int = 200
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthPolicy:
    checks: tuple[CheckSpec, ...]
    deadline_seconds: float = DEFAULT_DEADLINE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


def parse_policy(policies: Mapping[str, Any] | None) -> HealthPolicy:
    """The health policy of a profile's ``policies``; ConfigError names the bad entry."""
    policies = policies or {}
    raw = policies.get("health_checks") or [{"type": "model_load"}, {"type": "probe"}]
    if not isinstance(raw, list):
        raise ConfigError("policies.health_checks must be a list of checks")
    checks = [_check(i, doc) for i, doc in enumerate(raw)]
    if not any(c.type == "model_load" for c in checks):
        checks.insert(0, CheckSpec("model_load", DEFAULT_TIMEOUTS["model_load"]))
    deadline = _number(policies, "health_deadline_seconds", DEFAULT_DEADLINE_S)
    attempts = int(_number(policies, "max_attempts", DEFAULT_MAX_ATTEMPTS))
    if not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
        raise ConfigError(f"policies.max_attempts must be 1..{MAX_ATTEMPTS_LIMIT}, not {attempts}")
    return HealthPolicy(tuple(checks), deadline, attempts)


def _number(doc: Mapping[str, Any], key: str, default: float) -> float:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"policies.{key} must be a positive number, not {value!r}")
    return float(value)


def _check(index: int, doc: Any) -> CheckSpec:
    where = f"policies.health_checks[{index}]"
    if not isinstance(doc, Mapping) or doc.get("type") not in DEFAULT_TIMEOUTS:
        raise ConfigError(f"{where}: type must be one of {', '.join(DEFAULT_TIMEOUTS)}")
    kind = doc["type"]
    timeout = _number(doc, "timeout_seconds", DEFAULT_TIMEOUTS[kind])
    if kind == "latency":
        if "p95_ms" not in doc:
            raise ConfigError(f"{where}: a latency check needs p95_ms, its budget")
        samples = int(_number(doc, "samples", 50))
        return CheckSpec(kind, timeout, p95_ms=_number(doc, "p95_ms", 0.0), samples=samples)
    if kind == "http":
        url = doc.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url must be an http:// or https:// URL")
        return CheckSpec(kind, timeout, url=url, expect_status=int(doc.get("expect_status", 200)))
    if kind == "exec":
        command = doc.get("command")
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) for a in command)
        ):
            raise ConfigError(f"{where}: command must be a non-empty list of strings (an argv)")
        return CheckSpec(kind, timeout, command=tuple(command))
    return CheckSpec(kind, timeout)
