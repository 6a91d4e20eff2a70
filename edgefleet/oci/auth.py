"""Registry authentication: the ``WWW-Authenticate`` challenge and what answers it.

A registry answers 401 with ``Bearer realm=…,service=…,scope=…`` (distribution's token
authentication) or ``Basic realm=…``. The client hands the challenge to an
:data:`Authenticator`, which returns the ``Authorization`` header to retry with and how
long it stays good; the client keeps it for that repository until then.

- :class:`PasswordAuth` is what docker and oras do: Basic straight to a Basic registry,
  or GET the Bearer realm with Basic credentials (none for an anonymous token) and read
  ``token`` or ``access_token`` from its JSON. Operators use it with their username
  and API token, or with the API token alone, which the controller's realm also takes
  as a bearer.
- :class:`ScopedTokens` asks a callable for a token per scope: the device agent gets
  pull tokens from the controller that way.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from edgefleet.oci.errors import RegistryAuthError
from edgefleet.oci.transport import Endpoint, Transport

DEFAULT_TOKEN_SECONDS = 60
"""Distribution's token specification: a token without ``expires_in`` lasts 60 s."""
EARLY_SECONDS = 5
"""Renew a token this long before it expires, so a request never carries a stale one."""

_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """``bearer`` or ``basic``, lowercase."""
    realm: str = ""
    service: str = ""
    scope: str = ""
    """Space-separated ``repository:NAME:ACTIONS`` entries; empty for ``/v2/`` itself."""


@dataclass(frozen=True)
class Grant:
    """An ``Authorization`` header value, and until when (``time.monotonic()``) it holds."""

    header: str
    expires_at: float | None = None

    def fresh(self) -> bool:
        return self.expires_at is None or time.monotonic() < self.expires_at - EARLY_SECONDS


Authenticator = Callable[[Challenge], Grant]


def parse_challenge(header: str | None) -> Challenge:
    """The first challenge of a ``WWW-Authenticate`` header."""
    if not header:
        raise RegistryAuthError(
            "the registry answered 401 without a WWW-Authenticate challenge: it cannot be "
            "authenticated against; check the registry's auth configuration"
        )
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) or m.group(3) or "") for m in _PARAM.finditer(rest)}
    return Challenge(
        scheme.lower(), params.get("realm", ""), params.get("service", ""), params.get("scope", "")
    )


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class PasswordAuth:
    """Username and password (or none, for anonymous tokens), the docker token flow.

    ``api_token`` instead goes to the token realm as a bearer, and only to a realm under
    ``api_token_origin`` (the controller's URL): a registry names its realm, and an
    operator's API token must not go wherever a registry says.
    """

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        api_token: str | None = None,
        api_token_origin: str = "",
        ca_file: Path | None = None,
        verify_tls: bool = True,
    ) -> None:
        self.username, self.password = username, password
        self.api_token, self.api_token_origin = api_token, api_token_origin.rstrip("/") + "/"
        self._ca_file, self._verify_tls = ca_file, verify_tls

    def __call__(self, challenge: Challenge) -> Grant:
        if challenge.scheme == "basic":
            if self.username is None:
                raise RegistryAuthError(
                    "the registry asks for a username and password: set "
                    "EDGEFLEET_REGISTRY_USERNAME and EDGEFLEET_REGISTRY_PASSWORD"
                )
            return Grant(basic_header(self.username, self.password or ""))
        if challenge.scheme != "bearer" or not challenge.realm:
            raise RegistryAuthError(
                f"the registry asks for {challenge.scheme!r} authentication, which Edgefleet "
                "does not speak (only Basic and Bearer token)"
            )
        return self._token(challenge)

    def _token(self, challenge: Challenge) -> Grant:
        realm = urlsplit(challenge.realm)
        if realm.scheme not in ("http", "https") or not realm.netloc:
            raise RegistryAuthError(f"the registry's token realm {challenge.realm!r} is not a URL")
        query = [("service", challenge.service)] if challenge.service else []
        query += [("scope", s) for s in challenge.scope.split()]
        target = (realm.path or "/") + "?" + "&".join(filter(None, (realm.query, urlencode(query))))
        headers = {"Accept": "application/json"}
        if self.username is not None:
            headers["Authorization"] = basic_header(self.username, self.password or "")
        elif self.api_token and challenge.realm.startswith(self.api_token_origin):
            headers["Authorization"] = f"Bearer {self.api_token}"
        step = f"getting a registry token from {challenge.realm} for {challenge.scope or 'login'}"
        transport = Transport(Endpoint(realm.scheme, realm.netloc, self._ca_file, self._verify_tls))
        try:
            with transport.request("GET", target, headers, None, step) as response:
                body = response.read()
                status = response.status
        finally:
            transport.close()
        if status in (401, 403):
            raise RegistryAuthError(
                f"{step}: the token service refused the credentials (HTTP {status}): "
                f"{_message(body)}; check the username and API token (edgefleet login)"
            )
        if status != 200:
            raise RegistryAuthError(f"{step}: HTTP {status}: {_message(body)}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            lifetime = int(doc.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryAuthError(f"{step}: the answer is not a token document") from exc
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"{step}: the answer holds neither token nor access_token")
        return Grant(f"Bearer {token}", time.monotonic() + lifetime)


class ScopedTokens:
    """Bearer tokens from ``fetch(scope) -> (token, lifetime seconds or None)``."""

    def __init__(self, fetch: Callable[[str], str | tuple[str, float | None]]) -> None:
        self._fetch = fetch

    def __call__(self, challenge: Challenge) -> Grant:
        if challenge.scheme != "bearer":
            raise RegistryAuthError(
                f"the registry asks for {challenge.scheme!r} authentication; this client has "
                "only bearer tokens: configure the registry for token authentication"
            )
        answer = self._fetch(challenge.scope)
        token, lifetime = answer if isinstance(answer, tuple) else (answer, None)
        expires = None if lifetime is None else time.monotonic() + lifetime
        return Grant(f"Bearer {token}", expires)


def _message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace") or "(empty answer)"
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))
        if "errors" in doc:
            return "; ".join(str(e.get("message", e)) for e in doc["errors"] if isinstance(e, dict))
        if "detail" in doc:
            return str(doc["detail"])
    return body[:200].decode(errors="replace")
