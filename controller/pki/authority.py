"""Load or create the controller's CA hierarchy and sign device CSRs.

Layout in ``<data_dir>/pki`` (keys mode 0600): ``root``, ``server-ca`` and
``device-ca`` key/cert pairs, and the TLS ``server`` certificate whose chain is
server + server-ca. Never one key for everything: the server intermediate can be
replaced without touching device certificates, and the root key is only used to
sign intermediates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.controller.pki import certs
from edgefleet.errors import BadRequest
from edgefleet.signing import cert_pin, spki_pin

ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 1825
SERVER_DAYS = 397


@dataclass
class Authority:
    directory: Path
    root: x509.Certificate
    server_ca: x509.Certificate
    device_ca: x509.Certificate
    device_ca_key: ec.EllipticCurvePrivateKey
    _chain_pem: str = field(init=False, default="")
    _device_chain_tail: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self._chain_pem = "".join(certs.pem(c) for c in (self.root, self.server_ca, self.device_ca))
        self._device_chain_tail = certs.pem(self.device_ca)

    @property
    def root_pin(self) -> str:
        return cert_pin(self.root)

    @property
    def chain_pem(self) -> str:
        """Roots then intermediates: what an agent fetches before it trusts anything."""
        return self._chain_pem

    @property
    def trust_bundle(self) -> list[str]:
        return [certs.pem(self.root)]

    @property
    def server_cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def root_cert_file(self) -> Path:
        return self.directory / "root.pem"

    def sign_device(
        self, public_key: ec.EllipticCurvePublicKey, device_id: str, days: int
    ) -> tuple[str, datetime]:
        """Issue a device certificate; returns the PEM chain (device, intermediate) and its
        expiry. Takes the key, not the CSR, so an approval days later can still sign."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Edgefleet devices"),
                x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            ]
        )
        cert = certs.leaf(
            subject, public_key, self.device_ca_key, self.device_ca, timedelta(days=days)
        )
        return certs.pem(cert) + self._device_chain_tail, cert.not_valid_after_utc


def parse_device_csr(csr_pem: str) -> tuple[x509.CertificateSigningRequest, str]:
    """Check a device CSR and return it with its key pin; every refusal says why."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise BadRequest(
            "the CSR is not a PEM certificate signing request", code="csr_malformed"
        ) from exc
    key = csr.public_key()
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


def load_or_create_authority(directory: Path, server_names: list[str]) -> Authority:
    """Create the hierarchy on first start; reissue the server certificate when its names
    change or it nears expiry. Call from one process before workers start."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_key = _key(directory / "root.key")
    root = _cert(
        directory / "root.pem",
        lambda: certs.self_signed_root(root_key, "Edgefleet root", ROOT_DAYS),
    )
    server_ca_key = _key(directory / "server-ca.key")
    server_ca = _cert(
        directory / "server-ca.pem",
        lambda: certs.intermediate(
            server_ca_key, "Edgefleet server CA", root_key, root, INTERMEDIATE_DAYS
        ),
    )
    device_ca_key = _key(directory / "device-ca.key")
    device_ca = _cert(
        directory / "device-ca.pem",
        lambda: certs.intermediate(
            device_ca_key, "Edgefleet device CA", root_key, root, INTERMEDIATE_DAYS
        ),
    )
    _ensure_server_cert(directory, server_ca_key, server_ca, server_names)
    return Authority(directory, root, server_ca, device_ca, device_ca_key)


def load_authority(directory: Path) -> Authority:
    """Load an existing hierarchy (worker processes; never creates anything)."""
    return Authority(
        directory,
        _read_cert(directory / "root.pem"),
        _read_cert(directory / "server-ca.pem"),
        _read_cert(directory / "device-ca.pem"),
        certs.read_key(directory / "device-ca.key"),
    )


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return certs.read_key(path)
    key = certs.new_key()
    certs.write_key(path, key)
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
    certs.write_key(key_path, key)
    certs.write_cert(cert_path, cert, ca)
