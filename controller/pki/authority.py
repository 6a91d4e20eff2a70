"""Load or create the controller's CA hierarchy, rotate it, and sign device CSRs.

Layout in ``<data_dir>/pki`` (keys mode 0600): ``root``, ``server-ca`` and
``device-ca`` key/cert pairs, and the TLS ``server`` certificate whose chain is
server + server-ca. Never one key for everything: the server intermediate can be
replaced without touching device certificates, and the root key is only used to
sign intermediates and the cross-certificate of its successor.

Rotation has two steps, each followed by a (rolling) restart of the controller:

1. ``stage_rotation``: a next hierarchy in ``pki/next/`` and ``next/cross.pem``, the
   next root signed by the current one. The trust bundle in every device's desired
   state now carries both roots and the cross-certificate, so devices learn the next
   root over a connection they already trust; registration files name both pins.
2. ``promote_rotation``: the next hierarchy becomes current (server certificate and
   device certificates from the new intermediates); the old root stays in
   ``pki/previous/`` and the cross-certificate in ``pki/cross.pem``, so a device that
   only pins the old root (an image flashed before the rotation, or one offline all
   along) still accepts the new chain by the old root's signature.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.controller.pki import certs
from edgefleet.errors import BadRequest, Conflict
from edgefleet.signing import cert_pin, spki_pin

ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 1825
SERVER_DAYS = 397
NEXT = "next"
PREVIOUS = "previous"
CROSS = "cross.pem"


@dataclass
class Authority:
    directory: Path
    root: x509.Certificate
    server_ca: x509.Certificate
    device_ca: x509.Certificate
    device_ca_key: ec.EllipticCurvePrivateKey
    next_root: x509.Certificate | None = None
    previous_root: x509.Certificate | None = None
    cross: list[x509.Certificate] = field(default_factory=list)
    """Cross-certificates: the next root by the current one, the current by the previous."""
    _chain_pem: str = field(init=False, default="")
    _device_chain_tail: str = field(init=False, default="")

    def __post_init__(self) -> None:
        roots = [r for r in (self.root, self.next_root, self.previous_root) if r is not None]
        self._trust = [certs.pem(c) for c in (*roots, *self.cross)]
        self._chain_pem = (
            "".join(self._trust) + certs.pem(self.server_ca) + certs.pem(self.device_ca)
        )
        self._device_chain_tail = certs.pem(self.device_ca)

    @property
    def root_pin(self) -> str:
        return cert_pin(self.root)

    @property
    def root_pins(self) -> list[str]:
        """Pins for new registration files: the current root, and the next one if staged."""
        return [cert_pin(r) for r in (self.root, self.next_root) if r is not None]

    @property
    def chain_pem(self) -> str:
        """Roots, cross-certificates, then intermediates: what an agent fetches before it
        trusts anything."""
        return self._chain_pem

    @property
    def trust_bundle(self) -> list[str]:
        """Roots and cross-certificates, as they travel in every device's desired state."""
        return self._trust

    def sign_device(
        self, public_key: ec.EllipticCurvePublicKey, device_id: str, lifetime: timedelta
    ) -> tuple[str, datetime]:
        """Issue a device certificate; returns the PEM chain (device, intermediate) and its
        expiry. Takes the key, not the CSR, so an approval days later can still sign."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Edgefleet devices"),
                x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            ]
        )
        cert = certs.leaf(subject, public_key, self.device_ca_key, self.device_ca, lifetime)
        return certs.pem(cert) + self._device_chain_tail, cert.not_valid_after_utc


def parse_device_csr(csr_pem: str) -> tuple[x509.CertificateSigningRequest, str]:
    """Check a device CSR and return it with its key pin; every refusal says why."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, x509.InvalidVersion) as exc:
        raise BadRequest(
            "the CSR is not a PEM certificate signing request", code="csr_malformed"
        ) from exc
    try:
        key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:  # an unknown curve, a point off it
        raise BadRequest(
            f"the CSR's public key cannot be read ({exc}); device keys must be EC P-256",
            code="csr_key_type",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise BadRequest(
            "device keys must be EC P-256 (ES256); this CSR carries another key type",
            code="csr_key_type",
        )
    try:
        if not csr.is_signature_valid:
            raise InvalidSignature
    except (InvalidSignature, ValueError) as exc:
        raise BadRequest(
            "the CSR's signature does not verify with its own key", code="csr_signature"
        ) from exc
    return csr, spki_pin(key)


def load_or_create_authority(
    directory: Path, server_names: list[str], passphrase: bytes | None = None
) -> Authority:
    """Create the hierarchy on first start; reissue the server certificate when its names
    change or it nears expiry. Call from one process before workers start. With a
    passphrase, keys it writes are encrypted and encrypted keys can be read."""
    _hierarchy(directory, passphrase)
    server_ca_key = certs.read_key(directory / "server-ca.key", passphrase)
    server_ca = _read_cert(directory / "server-ca.pem")
    _ensure_server_cert(directory, server_ca_key, server_ca, server_names, passphrase)
    return load_authority(directory, passphrase)


def load_authority(directory: Path, passphrase: bytes | None = None) -> Authority:
    """Load an existing hierarchy (worker processes; never creates anything)."""
    return Authority(
        directory,
        _read_cert(directory / "root.pem"),
        _read_cert(directory / "server-ca.pem"),
        _read_cert(directory / "device-ca.pem"),
        certs.read_key(directory / "device-ca.key", passphrase),
        next_root=_maybe_cert(directory / NEXT / "root.pem"),
        previous_root=_maybe_cert(directory / PREVIOUS / "root.pem"),
        cross=[
            c
            for c in (_maybe_cert(directory / NEXT / CROSS), _maybe_cert(directory / CROSS))
            if c is not None
        ],
    )


def _maybe_cert(path: Path) -> x509.Certificate | None:
    return _read_cert(path) if path.exists() else None


def _hierarchy(
    directory: Path, passphrase: bytes | None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Root, server and device intermediates in ``directory`` (made where missing)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Each generation's names are its own, so an old and a new root never share a subject.
    tag = datetime.now(UTC).strftime("%Y%m%d") + "-" + secrets.token_hex(3)
    root_key = _key(directory / "root.key", passphrase)
    root = _cert(
        directory / "root.pem",
        lambda: certs.self_signed_root(root_key, f"Edgefleet root {tag}", ROOT_DAYS),
    )
    for name, cn in (
        ("server-ca", f"Edgefleet server CA {tag}"),
        ("device-ca", f"Edgefleet device CA {tag}"),
    ):
        key = _key(directory / f"{name}.key", passphrase)
        _cert(
            directory / f"{name}.pem",
            lambda key=key, cn=cn: certs.intermediate(key, cn, root_key, root, INTERMEDIATE_DAYS),
        )
    return root_key, root


def stage_rotation(directory: Path, passphrase: bytes | None = None) -> x509.Certificate:
    """Make the next hierarchy and cross-sign its root with the current root's key."""
    if (directory / NEXT).exists():
        raise Conflict(
            "a rotation is staged already; promote it (`edgefleet pki promote`) first",
            code="rotation_staged",
        )
    current_key = certs.read_key(directory / "root.key", passphrase)
    current = _read_cert(directory / "root.pem")
    staging = directory / "next.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    next_key, next_root = _hierarchy(staging, passphrase)
    cross = certs.cross_sign(next_root, next_key.public_key(), current_key, current, ROOT_DAYS)
    certs.write_cert(staging / CROSS, cross)
    staging.rename(directory / NEXT)
    return next_root


def promote_rotation(
    directory: Path, server_names: list[str], passphrase: bytes | None = None
) -> x509.Certificate:
    """Make the staged hierarchy current; keep the old root (and its cross-signature of
    the new one) so devices that pin only the old root still follow."""
    nxt = directory / NEXT
    if not nxt.exists():
        raise Conflict(
            "no rotation is staged; run `edgefleet pki rotate` first", code="no_rotation"
        )
    previous = directory / PREVIOUS
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir(mode=0o700)
    for name in ("root", "server-ca", "device-ca"):
        for ext in (".key", ".pem"):
            os.replace(directory / f"{name}{ext}", previous / f"{name}{ext}")
            os.replace(nxt / f"{name}{ext}", directory / f"{name}{ext}")
    os.replace(nxt / CROSS, directory / CROSS)
    shutil.rmtree(nxt)
    server_ca_key = certs.read_key(directory / "server-ca.key", passphrase)
    for stale in ("server.pem", "server.key"):
        (directory / stale).unlink(missing_ok=True)
    _ensure_server_cert(
        directory, server_ca_key, _read_cert(directory / "server-ca.pem"), server_names, passphrase
    )
    return _read_cert(directory / "root.pem")


def _key(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return certs.read_key(path, passphrase)
    key = certs.new_key()
    certs.write_key(path, key, passphrase)
    return key


def _cert(path: Path, make) -> x509.Certificate:  # type: ignore[no-untyped-def]
    if path.exists():
        return _read_cert(path)
    cert = make()
    certs.write_cert(path, cert)
    return cert


def _read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ensure_server_cert(
    directory: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    server_names: list[str],
    passphrase: bytes | None,
) -> None:
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    if cert_path.exists() and key_path.exists():
        current = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        sans = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
            str(v) for v in sans.get_values_for_type(x509.IPAddress)
        }
        fresh = current.not_valid_after_utc - datetime.now(UTC) > timedelta(days=30)
        if have == set(server_names) and fresh:
            return
    key = certs.new_key()
    cert = certs.leaf(
        certs.name(server_names[0]),
        key.public_key(),
        ca_key,
        ca,
        timedelta(days=SERVER_DAYS),
        server_names=server_names,
    )
    certs.write_key(key_path, key, passphrase)
    certs.write_cert(cert_path, cert, ca)
