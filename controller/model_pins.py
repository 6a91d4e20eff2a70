"""Model references pinned at apply time: a profile may name a model by tag, and the
revision stores the digest that tag names now, so every device runs the same bytes.

The controller reads the manifest itself. On a registry that trusts it (the challenge
names this controller's ``registry_service``) it signs itself a pull token; anywhere
else it asks anonymously. References that already carry a digest are kept as written
and cost no registry call: an apply works offline when the profile is pinned.
"""

from __future__ import annotations

from typing import Any

from edgefleet.controller.registry_tokens import REPOSITORY, Access, RegistryTokens, parse_scopes
from edgefleet.controller.settings import Settings
from edgefleet.errors import ApiError
from edgefleet.oci import reference as refs
from edgefleet.oci.auth import Challenge, Grant, PasswordAuth
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import ArtifactNotFound, OciError
from edgefleet.oci.resolve import resolve
from edgefleet.oci.transport import Endpoint

CONTROLLER_SUBJECT = "controller"


class UnresolvedModel(ApiError):
    """A model's tag could not be resolved; the message says which model and why."""

    status = 422
    default_code = "unresolved_model"


def origin(settings: Settings, registry: str) -> str:
    """The base URL of ``registry`` (``host[:port]``): plain HTTP only where configured."""
    scheme = "http" if registry in settings.registry_insecure else "https"
    return f"{scheme}://{registry}"


def pin(settings: Settings, tokens: RegistryTokens, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with every model reference (and ``parent``) carrying a digest (tags
    resolved now)."""
    models = spec.get("models") or []
    fields = ("reference", "parent")  # a quantized model's full-precision parent, too
    if all("@" in m[f] for m in models for f in fields if f in m):
        return spec
    pinned = []
    for i, model in enumerate(models):
        model = dict(model)
        for f in fields:
            text = model.get(f)
            if text is not None and "@" not in text:
                model[f] = _resolve(settings, tokens, f"/models/{i}/{f}", model["name"], text)
        pinned.append(model)
    return {**spec, "models": pinned}


def _resolve(settings: Settings, tokens: RegistryTokens, where: str, name: str, text: str) -> str:
    try:
        ref = refs.parse(text)
        endpoint = Endpoint.parse(origin(settings, ref.registry), timeout=15.0)
        with RegistryClient(endpoint, _Auth(settings, tokens)) as client:
            return str(resolve(client, ref))
    except ArtifactNotFound as exc:
        raise UnresolvedModel(
            f"{where}: model {name!r}: tag {text!r} does not resolve: {exc}"
        ) from exc
    except OciError as exc:
        raise UnresolvedModel(f"{where}: model {name!r}: cannot resolve {text!r}: {exc}") from exc


class _Auth:
    """Our own pull token where the registry trusts us; anonymous elsewhere."""

    def __init__(self, settings: Settings, tokens: RegistryTokens) -> None:
        self._service = settings.registry_service
        self._tokens = tokens
        self._anonymous = PasswordAuth()

    def __call__(self, challenge: Challenge) -> Grant:
        if challenge.scheme != "bearer" or challenge.service != self._service:
            return self._anonymous(challenge)
        wanted = parse_scopes(challenge.scope.split()) if challenge.scope else []
        pull = [Access(a.type, a.name, frozenset({"pull"})) for a in wanted if a.type == REPOSITORY]
        token = self._tokens.issue(CONTROLLER_SUBJECT, pull)
        return Grant(f"Bearer {token.token}")
