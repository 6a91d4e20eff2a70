"""Short-lived device access tokens: issued after an assertion, checked on every call.

HS256 with a key id, so a check is an HMAC and a dict lookup: a verified token is
remembered until it expires, which makes the hot path (``GET desired`` answered
304) cost microseconds. The token carries the device's credential generation;
the caller compares it with the current one, so decommission or re-keying
refuses older tokens at once.

The keys come from the keyring (``controller/keyring.py``): one signs, the previous
ones verify until every token they signed has expired, so a rotation logs no device out.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import jwt

from edgefleet.errors import Unauthorized

if TYPE_CHECKING:
    from edgefleet.controller.keyring import AccessKeys, Keyring

KEY_FILE = "access-token.key"
_MAX_REMEMBERED = 200_000


@dataclass(frozen=True, slots=True)
class DeviceClaims:
    device_id: str
    generation: int
    expires_at: float


def load_or_create_key(data_dir: Path) -> tuple[str, bytes]:
    """The (key id, HMAC key) shared by every worker; created once, mode 0600."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{secrets.token_hex(4)} {secrets.token_hex(32)}\n")
        os.replace(tmp, path)
    kid, hexkey = path.read_text().split()
    return kid, bytes.fromhex(hexkey)


class AccessTokens:
    def __init__(
        self, keyring: Keyring, audience: str, ttl_seconds: int, backdate_seconds: int
    ) -> None:
        self._ring, self._aud = keyring, audience
        self._ttl, self._backdate = ttl_seconds, backdate_seconds
        self._verified: dict[str, DeviceClaims] = {}
        self._keys: AccessKeys = keyring.access()

    def _current(self, check_epoch: bool = False) -> AccessKeys:
        """The keyring's keys; tokens remembered under a key that left are forgotten."""
        keys = self._ring.access(check_epoch)
        if keys is not self._keys:
            if not keys.accepted.keys() >= self._keys.accepted.keys():
                self._verified = {}
            self._keys = keys
        return keys

    @property
    def ttl_seconds(self) -> int:
        return self._ttl

    def issue(self, device_id: str, generation: int) -> str:
        now = int(time.time())
        claims = {
            "sub": device_id,
            "gen": generation,
            "aud": self._aud,
            "typ": "device",
            "iat": now,
            "nbf": now - self._backdate,
            "exp": now + self._ttl,
        }
        keys = self._current(check_epoch=True)
        return jwt.encode(claims, keys.key, algorithm="HS256", headers={"kid": keys.kid})

    def verify(self, token: str) -> DeviceClaims:
        now = time.time()
        keys = self._current()
        hit = self._verified.get(token)
        if hit is not None:
            if hit.expires_at <= now:
                del self._verified[token]
                raise Unauthorized("the access token has expired", code="token_expired")
            return hit
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            known = keys.accepted.get(kid) if isinstance(kid, str) else None
            if known is None and isinstance(kid, str):
                known = self._ring.reload_for_unknown_kid().accepted.get(kid)
            if known is None:
                raise Unauthorized(
                    "the access token was signed with an unknown or retired key; get a new "
                    "one at /auth/token",
                    code="invalid_token",
                )
            key, until = known
            if until is not None and until <= now:
                raise Unauthorized(
                    "the access token was signed with a retired key; get a new one",
                    code="invalid_token",
                )
            claims = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                audience=self._aud,
                options={"require": ["sub", "gen", "exp", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the access token has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(
                f"the access token is not valid: {exc}", code="invalid_token"
            ) from exc
        if claims.get("typ") != "device" or not isinstance(claims["gen"], int):
            raise Unauthorized("not a device access token", code="invalid_token")
        found = DeviceClaims(claims["sub"], claims["gen"], float(claims["exp"]))
        if len(self._verified) >= _MAX_REMEMBERED:
            self._verified.clear()
        self._verified[token] = found
        return found
