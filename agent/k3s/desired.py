"""The desired-state ConfigMap (``edgefleet-desired``, rendered by the controller into
the device's folder) as the :class:`DesiredState` direct mode gets from the device API.

What Git does not carry stays at its default here: the trust bundle and the operator's
update retries come from the device API instead (the daemon reads them whenever the
status ack's ETag moves). Model origins are left to the reference's registry, over
HTTPS, or the site's mirrors.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from edgefleet.agent.k3s.api import ClusterError
from edgefleet.wire import (
    DesiredState,
    DriftPolicy,
    HealthPolicy,
    ModelRef,
    ModelSignaturePolicy,
    ResultPolicy,
)

DEFAULT_INTERVAL_S = 60


def etag_of(data: dict[str, str]) -> str:
    """A digest of the ConfigMap's data: unchanged data, nothing to apply."""
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return '"cm-' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _json(data: dict[str, str], key: str, default: Any) -> Any:
    text = data.get(key) or ""
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ClusterError(f"the desired-state ConfigMap's {key!r} is not JSON: {exc}") from exc


def desired_from(data: dict[str, str], device_id: str) -> DesiredState:
    """``data`` of the ConfigMap -> DesiredState; a malformed one is a ClusterError."""
    try:
        interval = int(data.get("interval_seconds") or DEFAULT_INTERVAL_S)
        return DesiredState(
            device_id=device_id,
            profile=data.get("profile") or None,
            revision=int(data.get("revision") or 0),
            models=[
                ModelRef(name=m["name"], reference=m["reference"], digest=m["digest"])
                for m in _json(data, "models", [])
            ],
            config=_json(data, "config", {}),
            interval_seconds=interval,
            health=HealthPolicy.from_policies(_json(data, "health", {})),
            results=ResultPolicy.model_validate(_json(data, "results", {})),
            model_signatures=ModelSignaturePolicy.from_profile(
                {"model_signatures": _json(data, "model_signatures", None)}
            ),
            drift=DriftPolicy.from_profile({"drift": _json(data, "drift", None)}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"the desired-state ConfigMap cannot be used: {exc}") from exc
