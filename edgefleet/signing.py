"""Device request signing and root pins, shared by agent and controller.

A device proves its key with a short ES256 assertion (RFC 7523
``private_key_jwt``); roots are pinned by the SHA-256 of their
SubjectPublicKeyInfo, in kubeadm's ``sha256:<hex>`` format.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.errors import TrustError
from edgefleet.wire import MAX_ASSERTION_LIFETIME_S

PIN_PREFIX = "sha256:"


def spki_pin(public_key: ec.EllipticCurvePublicKey | object) -> str:
    """The ``sha256:<hex>`` pin of a public key's SubjectPublicKeyInfo."""
    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PIN_PREFIX + hashlib.sha256(der).hexdigest()


def cert_pin(cert: x509.Certificate) -> str:
    return spki_pin(cert.public_key())


def check_pin_format(pin: str) -> str:
    """Normalise a pin or raise; pins come from people and labels, so say what is wrong."""
    p = pin.strip().lower()
    hexpart = p.removeprefix(PIN_PREFIX)
    if not p.startswith(PIN_PREFIX) or len(hexpart) != 64:
        raise TrustError(f"pin {pin!r} is not of the form sha256:<64 hex digits>")
    try:
        bytes.fromhex(hexpart)
    except ValueError as exc:
        raise TrustError(f"pin {pin!r} has a non-hex digit") from exc
    return p


def pick_pinned_root(pem_bundle: str, pins: list[str]) -> list[x509.Certificate]:
    """Return the self-signed roots in ``pem_bundle`` whose SPKI matches one of ``pins``.

    Raises TrustError if none does: the caller must then refuse the server.
    """
    wanted = {check_pin_format(p) for p in pins}
    try:
        certs = x509.load_pem_x509_certificates(pem_bundle.encode())
    except ValueError as exc:
        raise TrustError(f"the server's chain is not PEM certificates: {exc}") from exc
    roots = [c for c in certs if c.subject == c.issuer and cert_pin(c) in wanted]
    if not roots:
        raise TrustError(
            "the server's certificate chain matches none of the pinned roots "
            f"({', '.join(sorted(wanted))}); refusing to talk to it"
        )
    return roots


def make_assertion(
    key: ec.EllipticCurvePrivateKey, device_id: str, audience: str, now: float | None = None
) -> str:
    """A one-use ES256 assertion for ``POST /auth/token``; ``now`` is the corrected clock."""
    t = int(time.time() if now is None else now)
    claims = {
        "iss": device_id,
        "sub": device_id,
        "aud": audience,
        "iat": t,
        "exp": t + MAX_ASSERTION_LIFETIME_S // 5,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, key, algorithm="ES256")
