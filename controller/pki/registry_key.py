"""The key that signs registry tokens, and the certificate the registry trusts it by.

A key of its own, never one of the CA keys. The registry's ``rootcertbundle`` holds
only this self-signed certificate, which is no CA: distribution 2.8 accepts a token
whose ``kid`` is the libtrust id of a bundle key, or whose ``x5c`` chain verifies up
to a bundle certificate, so with the fleet's root in the bundle any device could sign
tokens with its own key and chain. Files in ``<data_dir>/pki``: ``registry-token.key``
(mode 0600) and ``registry-token.pem``, the bundle to hand to the registry.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.controller.pki import certs
from edgefleet.errors import ConfigError

KEY_FILE = "registry-token.key"
BUNDLE_FILE = "registry-token.pem"
DAYS = 3650
"""Distribution does not check the bundle certificate's validity when it goes by ``kid``;
long-lived, so that a forgotten renewal cannot stop every pull."""


@dataclass(frozen=True)
class TokenKey:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    bundle: Path
    """The certificate's file: the registry's ``rootcertbundle``."""

    @property
    def kid(self) -> str:
        """The ``kid`` header by which the registry finds this key in its bundle."""
        return libtrust_key_id(self.certificate.public_key())  # type: ignore[arg-type]


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """docker/libtrust's key id: SHA-256 of the DER SubjectPublicKeyInfo, cut to 240 bits,
    base32 in twelve groups of four joined by colons."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def load_or_create_token_key(directory: Path, passphrase: bytes | None = None) -> TokenKey:
    """Make the pair on first start (one process, before workers); then just load it."""
    key_path, cert_path = directory / KEY_FILE, directory / BUNDLE_FILE
    if not (key_path.exists() and cert_path.exists()):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = certs.new_key()
        certs.write_key(key_path, key, passphrase)
        certs.write_cert(cert_path, new_certificate(key))
    return load_token_key(directory, passphrase)


def new_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """The self-signed certificate that names a token key in the registry's bundle."""
    cn = f"Edgefleet registry token signer {secrets.token_hex(3)}"
    return certs.self_signed_signer(key, cn, DAYS)


def load_token_key(directory: Path, passphrase: bytes | None = None) -> TokenKey:
    """Load the pair (worker processes and the CLI; never creates anything)."""
    key_path, cert_path = directory / KEY_FILE, directory / BUNDLE_FILE
    if not (key_path.exists() and cert_path.exists()):
        raise ConfigError(
            f"the registry token key ({key_path}, {cert_path}) is missing: run "
            "`edgefleet controller migrate` (or `serve`) to create it"
        )
    key = certs.read_key(key_path, passphrase)
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if certificate.public_key() != key.public_key():
        raise ConfigError(
            f"{cert_path} does not belong to {key_path}; delete both and run "
            "`edgefleet controller migrate`, then give the registry the new bundle"
        )
    return TokenKey(key, certificate, cert_path)
