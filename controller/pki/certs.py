"""Small builders for keys and certificates (P-256 throughout: fast and everywhere)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import ConfigError
from edgefleet.wire import CLOCK_TOLERANCE_S

BACKDATE = timedelta(seconds=CLOCK_TOLERANCE_S)
"""Devices' clocks may be this far behind; TLS libraries check against the local clock."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: object, lifetime: timedelta
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
            critical=False,
        )
    )


_CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
"""keyCertSign and cRLSign: all a CA certificate may do."""


def _ca(
    subject: x509.Name,
    public_key: object,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    days: int,
    path_length: int,
) -> x509.Certificate:
    """A CA certificate; ``issuer`` None means self-signed."""
    builder = (
        _builder(subject, issuer.subject if issuer else subject, public_key, timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_USAGE, critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(_aki(issuer), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def self_signed_root(key: ec.EllipticCurvePrivateKey, cn: str, days: int) -> x509.Certificate:
    return _ca(name(cn), key.public_key(), key, None, days, path_length=1)


def intermediate(
    key: ec.EllipticCurvePrivateKey,
    cn: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    days: int,
) -> x509.Certificate:
    return _ca(name(cn), key.public_key(), issuer_key, issuer, days, path_length=0)


def cross_sign(
    root: x509.Certificate,
    public_key: object,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    days: int,
) -> x509.Certificate:
    """``root``'s subject and key, vouched for by another root: a device that trusts the
    issuer can thereby trust ``root`` (CA rotation)."""
    return _ca(root.subject, public_key, issuer_key, issuer, days, path_length=1)


def self_signed_signer(key: ec.EllipticCurvePrivateKey, cn: str, days: int) -> x509.Certificate:
    """A self-signed certificate that is no CA: it vouches for its own key and nothing
    else, so trusting it (a registry's token bundle) trusts no chain below it."""
    return (
        _builder(name(cn), name(cn), key.public_key(), timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def leaf(
    subject: x509.Name,
    public_key: object,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    lifetime: timedelta,
    *,
    server_names: list[str] | None = None,
) -> x509.Certificate:
    """A server (with SANs) or client certificate signed by an intermediate."""
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(subject, issuer.subject, public_key, lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(_aki(issuer), critical=False)
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in server_names]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> None:
    """Write a private key readable by its owner only, atomically; encrypted (PKCS#8,
    best available encryption) when there is a passphrase."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption(),
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


ENCRYPTED = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def is_encrypted(path: Path) -> bool:
    return path.read_bytes().lstrip().startswith(ENCRYPTED)


def read_key(path: Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load a key, plain or encrypted; a plain key loads with a passphrase set too (it is
    encrypted by `edgefleet keys encrypt`, or when next written)."""
    data = path.read_bytes()
    encrypted = data.lstrip().startswith(ENCRYPTED)
    if encrypted and not passphrase:
        raise ConfigError(
            f"{path} is encrypted and no passphrase is set: set EDGEFLEET_KEY_PASSPHRASE, "
            "or EDGEFLEET_KEY_PASSPHRASE_FILE to the file holding it (a mounted Secret)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise ConfigError(
                f"{path} does not decrypt with the key passphrase set "
                "(EDGEFLEET_KEY_PASSPHRASE or _FILE): it is not the one the key was "
                "encrypted with"
            ) from exc
        raise ConfigError(f"{path} is not a PEM private key; restore it from backup") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} does not hold an EC private key; restore it from backup")
    return key


def write_cert(path: Path, *certs: x509.Certificate) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(pem(c) for c in certs))
    os.replace(tmp, path)


def encrypt_keys(directory: Path, passphrase: bytes) -> list[Path]:
    """Encrypt, in place and atomically, every plain private key under ``directory``
    (current, staged and previous hierarchies); returns those it encrypted."""
    done = []
    for path in sorted(directory.rglob("*.key")):
        if not is_encrypted(path):
            write_key(path, read_key(path), passphrase)
            done.append(path)
    return done
