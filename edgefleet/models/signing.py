"""Signed models: keys, the signed payload, signing and verifying (no registry here).

A signature covers a small canonical payload that names the model's repository and its
manifest digest, so a signature copied to another digest or another repository does
not verify. The registry host is left out on purpose: a site mirror serves the same
repository under another host, and the digest already pins the bytes.

    {"digest":"sha256:<hex>","repository":"models/detector","type":"<PAYLOAD_TYPE>"}

(compact JSON, keys sorted). Ed25519 signs the payload itself; ECDSA P-256 signs its
SHA-256 (DER signature). A key is named by its fingerprint, ``sha256:<hex>`` of its
DER SubjectPublicKeyInfo, the same form the root pins use. The agent imports this
module: it uses ``cryptography`` and the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgefleet.errors import ConfigError, TrustError

Algorithm = Literal["ed25519", "ecdsa-p256"]
ALGORITHMS: tuple[Algorithm, ...] = ("ed25519", "ecdsa-p256")
PAYLOAD_TYPE = "dev.edgefleet.model.signature.v1"
MAX_PAYLOAD = 4096
"""A payload names a repository and a digest; anything larger is not one of ours."""

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class SignatureRefused(TrustError):
    """A model is unsigned, or no signature on it verifies with a trusted key."""

    default_code = "model_signature"


@dataclass(frozen=True)
class TrustedKey:
    """A public key a profile trusts, under the name the profile gives it."""

    id: str
    key: PublicKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def algorithm(self) -> Algorithm:
        return algorithm_of(self.key)


@dataclass(frozen=True)
class Signature:
    """One signature over one payload, as stored beside the model."""

    keyid: str
    """The signing key's fingerprint."""
    algorithm: Algorithm
    value: bytes


# -- keys --------------------------------------------------------------------------------


def generate(algorithm: Algorithm = "ed25519") -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ConfigError(f"unknown signing algorithm {algorithm!r}: use {' or '.join(ALGORITHMS)}")


def public_pem(key: PrivateKey | PublicKey) -> str:
    public = key.public_key() if isinstance(key, PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def write_keypair(key: PrivateKey, private_path: Path, public_path: Path) -> None:
    """The private key (PKCS#8 PEM, unencrypted) created with mode 0600, never readable by
    others even for an instant; the public key beside it. An existing file is refused:
    overwriting a signing key loses it for good."""
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists: refusing to overwrite a key; choose another path")
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    public_path.write_text(public_pem(key))


def load_private(path: Path) -> PrivateKey:
    """A signing key file (PEM, unencrypted), Ed25519 or ECDSA P-256."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key (Ed25519 or ECDSA P-256); make "
            "one with `edgefleet models keygen`"
        ) from exc
    if not isinstance(key, PrivateKey) or (
        isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1)
    ):
        raise ConfigError(f"{path}: only Ed25519 and ECDSA P-256 keys sign models")
    return key


def load_public(pem: str | bytes, what: str) -> PublicKey:
    """A public key in PEM (SubjectPublicKeyInfo); ConfigError names ``what`` otherwise."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{what} is not a PEM public key (BEGIN PUBLIC KEY)") from exc
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ConfigError(f"{what} is a {type(key).__name__}: only Ed25519 and ECDSA P-256 keys")


def trusted_keys(keys: list[dict[str, Any]]) -> list[TrustedKey]:
    """A profile's ``model_signatures.keys`` (``id``, ``public_key``) as keys to verify with."""
    return [TrustedKey(k["id"], load_public(k["public_key"], f"key {k['id']!r}")) for k in keys]


def fingerprint(key: PrivateKey | PublicKey) -> str:
    public = key.public_key() if isinstance(key, PrivateKey) else key
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def algorithm_of(key: PrivateKey | PublicKey) -> Algorithm:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    return "ecdsa-p256"


# -- payload, sign, verify ---------------------------------------------------------------


def payload(repository: str, digest: str) -> bytes:
    """The bytes a signature covers (see the module's docstring)."""
    doc = {"digest": digest, "repository": repository, "type": PAYLOAD_TYPE}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign(key: PrivateKey, repository: str, digest: str) -> tuple[bytes, Signature]:
    """The payload for ``repository@digest`` and its signature by ``key``."""
    data = payload(repository, digest)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        value = key.sign(data)
    else:
        value = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return data, Signature(fingerprint(key), algorithm_of(key), value)


def encode(value: bytes) -> str:
    return base64.b64encode(value).decode()


def decode(text: str) -> bytes:
    """Base64 as stored; SignatureRefused when it is not."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureRefused("the signature is not base64") from exc


def verify(
    data: bytes, signature: Signature, keys: list[TrustedKey], repository: str, digest: str
) -> TrustedKey:
    """The trusted key whose signature ``signature`` is over ``data``, a payload naming
    exactly ``repository`` and ``digest``; SignatureRefused says why not."""
    key = next((k for k in keys if k.fingerprint == signature.keyid), None)
    if key is None:
        raise SignatureRefused(f"signed by key {signature.keyid}, which the profile does not list")
    try:
        if isinstance(key.key, ed25519.Ed25519PublicKey):
            key.key.verify(signature.value, data)
        else:
            key.key.verify(signature.value, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureRefused(
            f"the signature by key {key.id!r} does not verify: the payload or the signature "
            "was altered, or it was made by another key"
        ) from exc
    doc = _payload_doc(data)
    if doc.get("digest") != digest:
        raise SignatureRefused(
            f"key {key.id!r} signed {doc.get('digest')}, not this model's {digest}"
        )
    if doc.get("repository") != repository:
        raise SignatureRefused(
            f"key {key.id!r} signed this digest for repository {doc.get('repository')!r}, "
            f"not {repository!r}"
        )
    return key


def _payload_doc(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_PAYLOAD:
        raise SignatureRefused(f"the signed payload is {len(data)} bytes, not a model payload")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise SignatureRefused("the signed payload is not JSON") from exc
    if not isinstance(doc, dict) or doc.get("type") != PAYLOAD_TYPE:
        raise SignatureRefused(f"the signed payload is not a {PAYLOAD_TYPE} document")
    return doc
