"""Device request signing and root pins, shared by agent and controller.

A device proves its key with a short ES256 assertion (RFC 7523
``private_key_jwt``); roots are pinned by the SHA-256 of their
SubjectPublicKeyInfo, in kubeadm's ``sha256:<hex>`` format.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

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
    """The certificates in ``pem_bundle`` a device may trust, given its pins.

    A self-signed root is trusted when its SPKI matches a pin, or when the bundle
    holds a cross-certificate for it (same subject and key) signed by an already
    trusted root: that is how a CA rotation reaches devices that only pin the old
    root. Returns the trusted roots followed by the cross-certificates that vouched
    for them, so the result can be stored and checked again later. Raises
    TrustError if no root is trusted: the caller must then refuse the server.
    """
    wanted = {check_pin_format(p) for p in pins}
    try:
        certs = list(dict.fromkeys(x509.load_pem_x509_certificates(pem_bundle.encode())))
    except ValueError as exc:
        raise TrustError(f"the server's chain is not PEM certificates: {exc}") from exc
    roots = [c for c in certs if c.subject == c.issuer]
    trusted = [c for c in roots if cert_pin(c) in wanted]
    if not trusted:
        raise TrustError(
            "the server's certificate chain matches none of the pinned roots "
            f"({', '.join(sorted(wanted))}); refusing to talk to it"
        )
    vouching: list[x509.Certificate] = []
    grew = True
    while grew:
        grew = False
        for cross in certs:
            if cross.subject == cross.issuer or cross in vouching:
                continue
            signer = next((t for t in trusted if t.subject == cross.issuer), None)
            root = next((r for r in roots if r.subject == cross.subject and r not in trusted), None)
            if signer is None or root is None or spki_pin(root.public_key()) != cert_pin(cross):
                continue
            try:
                cross.verify_directly_issued_by(signer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            trusted.append(root)
            vouching.append(cross)
            grew = True
    return trusted + vouching


def renewal_proof(
    key: ec.EllipticCurvePrivateKey, device_id: str, audience: str, csr_pem: str, now: float
) -> str:
    """The key on record vouches for a new CSR (``POST /devices/{id}/renew``)."""
    digest = hashlib.sha256(csr_pem.encode()).hexdigest()
    return make_assertion(key, device_id, audience, now, csr_sha256=digest)


def make_assertion(
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    audience: str,
    now: float | None = None,
    **extra: str,
) -> str:
    """A one-use ES256 assertion for ``POST /auth/token`` (or, with ``csr_sha256``, the
    proof of a renewal); ``now`` is the corrected clock.

    Signed with ``cryptography`` directly (RFC 7515 compact form, RFC 7518 ES256): the
    agent imports nothing else to sign, and PyJWT's import (its JWKS client pulls in
    ``urllib.request``) cost the agent 3.6 MB of its idle memory. The controller
    verifies with PyJWT."""
    t = int(time.time() if now is None else now)
    claims = {
        "iss": device_id,
        "sub": device_id,
        "aud": audience,
        "iat": t,
        "exp": t + MAX_ASSERTION_LIFETIME_S // 5,
        "jti": secrets.token_urlsafe(16),
        **extra,
    }
    header = _b64({"alg": "ES256", "typ": "JWT"})
    signing_input = f"{header}.{_b64(claims)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input.decode()}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"


def _b64(doc: dict[str, object]) -> str:
    text = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()
