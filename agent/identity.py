"""The device's key pair and certificate: who this device is to the controller.

The key is made once and written (0600, atomically) before the first enrol
request leaves the device, so a retried enrolment, after a crash or a lost
answer, presents the same key and the controller returns the same device.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent.files import atomic_write, read_json, write_json
from edgefleet.errors import ConfigError, TrustError
from edgefleet.signing import spki_pin
from edgefleet.wire import CLOCK_TOLERANCE_S

log = logging.getLogger("edgefleet.agent")

KEY_FILE = "key.pem"
NEXT_KEY_FILE = "key.next.pem"
"""The key a renewal is introducing; it replaces key.pem once its certificate is stored."""
CERT_FILE = "device.pem"
DEVICE_FILE = "device.json"


def load_or_create_key(state_dir: Path, name: str = KEY_FILE) -> ec.EllipticCurvePrivateKey:
    """The device key from ``key.pem`` (or a renewal's ``key.next.pem``), made (P-256)
    and stored first if there is none."""
    path = state_dir / name
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        log.info("generated device key %s", path)
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("device key %s had mode %o; tightening it to 0600", path, mode)
        os.chmod(path, 0o600)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise ConfigError(
            f"device key {path} is unreadable ({exc}); if the device must start over, "
            "delete the state folder and decommission the old device on the controller"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"device key {path} is not an EC key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str, serial: str | None) -> str:
    """A PEM CSR naming the device by serial (or hostname); the controller sets the real subject."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "edgefleet-device")]
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial[:64]))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attrs))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Enrolment:
    """What the agent keeps once the controller has accepted it."""

    device_id: str
    enrolled_at: str
    profile: str | None = None


def save_enrolment(
    state_dir: Path, key: ec.EllipticCurvePrivateKey, enrolment: Enrolment, chain_pem: str
) -> None:
    """Store the chain and ``device.json``, after checking the certificate is for our key."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as exc:
        raise TrustError(f"the controller's certificate chain is not PEM: {exc}") from exc
    if spki_pin(certs[0].public_key()) != spki_pin(key.public_key()):
        raise TrustError(
            "the controller issued a certificate for another key; refusing it "
            "(this is a controller bug or an impostor)"
        )
    atomic_write(state_dir / CERT_FILE, chain_pem)
    write_json(
        state_dir / DEVICE_FILE,
        {
            "device_id": enrolment.device_id,
            "enrolled_at": enrolment.enrolled_at,
            "profile": enrolment.profile,
        },
    )


def load_enrolment(state_dir: Path) -> Enrolment | None:
    """The stored enrolment, or None if this device has not been enrolled yet."""
    data = read_json(state_dir / DEVICE_FILE)
    if not data or not (state_dir / CERT_FILE).exists():
        return None
    return Enrolment(
        device_id=data["device_id"],
        enrolled_at=data.get("enrolled_at", ""),
        profile=data.get("profile"),
    )


def renewal_due(state_dir: Path, now: float) -> bool:
    """True from two thirds of the certificate's lifetime on (``now``: corrected clock).

    The controller back-dates certificates by the clock tolerance, so the lifetime
    starts that much after ``notBefore``.
    """
    try:
        cert = x509.load_pem_x509_certificates((state_dir / CERT_FILE).read_bytes())[0]
    except (FileNotFoundError, ValueError):
        return False
    start = cert.not_valid_before_utc.timestamp() + CLOCK_TOLERANCE_S
    end = cert.not_valid_after_utc.timestamp()
    return now >= start + (end - start) * 2 / 3


def adopt_next_key(
    state_dir: Path, chain_pem: str, enrolment: Enrolment
) -> ec.EllipticCurvePrivateKey:
    """Store a renewal's certificate, then make its key the device key.

    In this order, a crash in between leaves ``device.pem`` for the next key while
    ``key.pem`` is the old one; :func:`settle_renewal` finishes the job at start.
    """
    key = load_or_create_key(state_dir, NEXT_KEY_FILE)
    save_enrolment(state_dir, key, enrolment, chain_pem)
    os.replace(state_dir / NEXT_KEY_FILE, state_dir / KEY_FILE)
    return key


def settle_renewal(state_dir: Path) -> None:
    """Finish a renewal a crash interrupted: promote ``key.next.pem`` if the stored
    certificate is already for it."""
    nxt = state_dir / NEXT_KEY_FILE
    if not nxt.exists():
        return
    try:
        cert = x509.load_pem_x509_certificates((state_dir / CERT_FILE).read_bytes())[0]
    except (FileNotFoundError, ValueError):
        return
    key = load_or_create_key(state_dir, NEXT_KEY_FILE)
    if spki_pin(cert.public_key()) == spki_pin(key.public_key()):
        os.replace(nxt, state_dir / KEY_FILE)
        log.info("finished an interrupted certificate renewal")
