"""Opaque bearer secrets (registration tokens, operator API tokens): made, parsed, checked.

A secret reads ``<prefix>.<key id>.<secret>``. Only the key id and a SHA-256 of the
secret are stored; the secret has 256 bits of entropy, so a plain hash is enough
(no password hashing needed) and lookups go by key id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

REGISTRATION = "efr"
OPERATOR = "efo"


@dataclass(frozen=True)
class BearerSecret:
    prefix: str
    kid: str
    secret: str

    def __str__(self) -> str:
        return f"{self.prefix}.{self.kid}.{self.secret}"

    @property
    def hash(self) -> str:
        return hash_secret(self.secret)


def new_secret(prefix: str) -> BearerSecret:
    return BearerSecret(prefix, secrets.token_hex(6), secrets.token_urlsafe(32))


def parse_secret(value: str, prefix: str) -> BearerSecret | None:
    """The parts of a well-formed secret with this prefix, else None."""
    parts = value.strip().split(".")
    if len(parts) != 3 or parts[0] != prefix or not parts[1] or len(parts[2]) < 32:
        return None
    return BearerSecret(*parts)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: BearerSecret, stored_hash: str) -> bool:
    return hmac.compare_digest(secret.hash, stored_hash)
