"""Console passwords, hashed with scrypt (memory-hard, in the standard library).

A stored hash describes itself in the PHC string format,
``$scrypt$n=16384,r=8,p=1$<salt>$<key>`` (unpadded base64), so the parameters can be
raised later without locking anyone out: a hash made with weaker ones still verifies,
and ``needs_rehash`` tells the login to store a stronger one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from edgefleet.errors import BadRequest


@dataclass(frozen=True)
class Cost:
    n: int
    r: int
    p: int

    @property
    def memory(self) -> int:
        """Bytes scrypt needs (128 * r * n per lane, lanes run one after another)."""
        return 128 * self.r * self.n


CURRENT = Cost(n=2**14, r=8, p=1)
"""16 MiB and about 50 ms per hash on a small machine: costly for a guesser, fine for a login."""
_MOST = Cost(n=2**20, r=32, p=16)
"""A stored hash asking for more than this is refused, not computed: a tampered row
must not make every login try allocate gigabytes."""
_SALT_BYTES = 16
_KEY_BYTES = 32
MIN_LENGTH = 10
MAX_LENGTH = 1024


def check_strength(password: str) -> None:
    """Refuse passwords a guesser would find quickly; length is what counts."""
    if len(password) < MIN_LENGTH:
        raise BadRequest(
            f"a password needs at least {MIN_LENGTH} characters; a few random words make a "
            "good one",
            code="weak_password",
        )
    if len(password) > MAX_LENGTH:
        raise BadRequest(f"a password has at most {MAX_LENGTH} characters", code="bad_password")


def hash_password(password: str, cost: Cost = CURRENT) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _derive(password, salt, cost)
    return f"$scrypt$n={cost.n},r={cost.r},p={cost.p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True only for the right password and a well-formed hash; compares in constant time."""
    parsed = _parse(stored or "")
    if parsed is None:
        return False
    cost, salt, key = parsed
    return hmac.compare_digest(_derive(password, salt, cost, len(key)), key)


def parameters(stored: str) -> Cost | None:
    """The scrypt cost a stored hash was made with, or None if it is not one of ours."""
    parsed = _parse(stored)
    return parsed[0] if parsed else None


def needs_rehash(stored: str) -> bool:
    cost = parameters(stored)
    return cost is None or (cost.n, cost.r, cost.p) < (CURRENT.n, CURRENT.r, CURRENT.p)


@functools.cache
def _dummy() -> str:
    return hash_password(secrets.token_urlsafe(16))


def burn_time(password: str) -> None:
    """Spend what a real check costs, so an unknown username takes as long as a wrong
    password and the response time does not tell which usernames exist."""
    verify_password(password, _dummy())


def _derive(password: str, salt: bytes, cost: Cost, length: int = _KEY_BYTES) -> bytes:
    return hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=cost.n,
        r=cost.r,
        p=cost.p,
        maxmem=cost.memory + 1024 * 1024,
        dklen=length,
    )


def _parse(stored: str) -> tuple[Cost, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "scrypt":
        return None
    try:
        fields = dict(item.split("=", 1) for item in parts[2].split(","))
        cost = Cost(n=int(fields["n"]), r=int(fields["r"]), p=int(fields["p"]))
        salt, key = _unb64(parts[3]), _unb64(parts[4])
    except (ValueError, KeyError):
        return None
    sane = (
        2 <= cost.n <= _MOST.n
        and cost.n & (cost.n - 1) == 0
        and 1 <= cost.r <= _MOST.r
        and 1 <= cost.p <= _MOST.p
        and len(salt) >= 8
        and 16 <= len(key) <= 64
    )
    return (cost, salt, key) if sane else None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
