"""A throwaway CA for the agent's tests: root, server and device intermediates, a server cert.

Mirrors the shape DESIGN.md gives the controller's PKI (one root, one
intermediate for servers, one for devices) so the agent sees real chains.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.signing import cert_pin


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return _pem(self.cert)


def _issue(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: Issued | None,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    sans: list[x509.GeneralName] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=3))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(signing_key, hashes.SHA256())


def _new_ca(subject: str, issuer: Issued | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(subject, key.public_key(), issuer, issuer.key if issuer else key, ca=True)
    return Issued(cert, key)


@dataclass
class TestPKI:
    """Root -> server intermediate -> server cert (127.0.0.1, localhost); root -> device CA."""

    __test__ = False

    name: str = "test"
    root: Issued = field(init=False)
    server_ca: Issued = field(init=False)
    device_ca: Issued = field(init=False)
    server: Issued = field(init=False)

    def __post_init__(self) -> None:
        self.root = _new_ca(f"{self.name} root")
        self.server_ca = _new_ca(f"{self.name} server CA", self.root)
        self.device_ca = _new_ca(f"{self.name} device CA", self.root)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]
        cert = _issue(
            "controller",
            key.public_key(),
            self.server_ca,
            self.server_ca.key,
            ca=False,
            sans=sans,
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        self.server = Issued(cert, key)

    @property
    def pin(self) -> str:
        return cert_pin(self.root.cert)

    def chain_bundle(self) -> str:
        """What ``GET /pki/chain`` serves: the root, then the intermediates."""
        return self.root.pem + self.server_ca.pem + self.device_ca.pem

    def server_files(self, folder) -> tuple[str, str]:
        """Write the server's cert chain and key for ``SSLContext.load_cert_chain``."""
        cert_path, key_path = folder / f"{self.name}-server.pem", folder / f"{self.name}-server.key"
        cert_path.write_text(self.server.pem + self.server_ca.pem)
        key_path.write_bytes(_key_pem(self.server.key))
        return str(cert_path), str(key_path)

    def sign_device(self, csr_pem: str, device_id: str) -> str:
        """Issue a device certificate for the CSR's key; return leaf + device CA (PEM)."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        cert = _issue(
            device_id,
            csr.public_key(),  # type: ignore[arg-type]
            self.device_ca,
            self.device_ca.key,
            ca=False,
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        return _pem(cert) + self.device_ca.pem
