"""Bearer tokens for the OCI registry (distribution's token authentication): scopes in,
a signed JWT out, and the registry configuration that trusts them.

The registry checks a token offline (``registry/auth/token`` in distribution 2.8):
``iss`` must be its configured issuer and ``aud`` its service, ``exp`` and ``nbf``
hold with 60 s leeway, and the ``kid`` header must be the libtrust id of a key in
its ``rootcertbundle``; the ``access`` claim lists what the bearer may do. ``aud``
is one string, since 2.8 decodes it into a string and refuses a list.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from edgefleet.controller.pki.registry_key import TokenKey
from edgefleet.controller.settings import Settings
from edgefleet.errors import BadRequest
from edgefleet.oci import reference as refs
from edgefleet.wire import API_PREFIX, RegistryToken

if TYPE_CHECKING:
    from edgefleet.controller.keyring import Keyring

TOKEN_PATH = "/registry/token"
"""The operators' token endpoint under the API prefix: the registry's ``realm``."""

REPOSITORY = "repository"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
"""Distribution's grammar for repository names (path components, no host, no tag)."""


@dataclass(frozen=True)
class Access:
    """Actions on one named resource, as a scope asks for them and the ``access`` claim
    grants them (``repository:models/resnet:pull,push``)."""

    type: str
    name: str
    actions: frozenset[str]

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scopes(scopes: Iterable[str]) -> list[Access]:
    """The ``scope`` parameters of a token request, merged per resource.

    Each may hold several scopes separated by spaces (OAuth 2 style) as well as repeat.
    """
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in (s for value in scopes for s in value.split()):
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not (kind and name and actions):
            raise BadRequest(
                f"scope {scope!r} is not TYPE:NAME:ACTIONS, e.g. repository:models/x:pull",
                code="invalid_scope",
            )
        if kind == REPOSITORY and not _REPOSITORY_NAME.match(name):
            raise BadRequest(
                f"{name!r} is not a repository name (lower-case path components, no host or tag)",
                code="invalid_scope",
            )
        merged.setdefault((kind, name), set()).update(a for a in actions.split(",") if a)
    return [Access(kind, name, frozenset(acts)) for (kind, name), acts in merged.items()]


def repository_of(reference: str) -> str:
    """``host[:port]/path[:tag]@sha256:…`` -> ``path``: profile references are pinned and
    always name their registry (``edgefleet/profile_schema.json``)."""
    return refs.parse(reference).repository


class RegistryTokens:
    """Signs tokens for one registry service with the controller's token key: a fixed
    one, or the keyring's active key, which a rotation changes without a restart."""

    def __init__(
        self,
        key: TokenKey | Callable[[], TokenKey],
        issuer: str,
        service: str,
        ttl_seconds: int,
    ) -> None:
        self._signer = key if callable(key) else lambda: key
        self._issuer, self._service, self._ttl = issuer, service, ttl_seconds

    @classmethod
    def from_settings(cls, settings: Settings, keyring: Keyring) -> RegistryTokens:
        return cls(
            lambda: keyring.registry().signing,
            settings.registry_token_issuer,
            settings.registry_service,
            settings.registry_token_ttl_seconds,
        )

    def check_service(self, service: str | None) -> None:
        """A client names the service from the registry's challenge; another registry's
        name means that registry is not configured to trust this controller."""
        if service is not None and service != self._service:
            raise BadRequest(
                f"this controller issues tokens for service {self._service!r}, not "
                f"{service!r}; set the registry's auth.token.service to match "
                "(`edgefleet controller registry-config` prints the block)",
                code="unknown_service",
            )

    def issue(self, subject: str, access: list[Access], now: float | None = None) -> RegistryToken:
        """A token for ``subject`` granting exactly ``access``; ``now`` is for tests that
        need a token from the past."""
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._service,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self._ttl,
            "jti": secrets.token_urlsafe(16),
            "access": [a.claim() for a in access],
        }
        signer = self._signer()
        token = jwt.encode(claims, signer.key, algorithm="ES256", headers={"kid": signer.kid})
        return RegistryToken(
            token=token,
            access_token=token,
            expires_in=self._ttl,
            issued_at=datetime.fromtimestamp(issued, UTC),
        )


def registry_auth_config(settings: Settings, bundle: Path) -> dict[str, Any]:
    """The ``auth:`` block of a docker-registry (distribution) configuration that trusts
    this controller's tokens; ``bundle`` is where the registry reads the certificate."""
    return {
        "token": {
            "realm": settings.effective_public_url.rstrip("/") + API_PREFIX + TOKEN_PATH,
            "service": settings.registry_service,
            "issuer": settings.registry_token_issuer,
            "rootcertbundle": str(bundle),
        }
    }
