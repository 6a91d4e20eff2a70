"""Which server the agent believes is its controller.

The roots come from the network only once, and only if one of them matches a
pin from the registration file (kubeadm's ``sha256:<SPKI hex>``). From then on
every connection is verified against those roots alone, with hostname checks.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgefleet.agent.client import Channel, Unreachable, parse_controller_url
from edgefleet.agent.files import atomic_write
from edgefleet.errors import TrustError
from edgefleet.signing import pick_pinned_root, spki_pin
from edgefleet.wire import API_PREFIX

log = logging.getLogger("edgefleet.agent")

TRUST_FILE = "trust.pem"
CHAIN_PATH = f"{API_PREFIX}/pki/chain"


def _pem(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def load_trust(state_dir: Path, pins: list[str]) -> str | None:
    """The stored roots (PEM) if they still match a pin; None if there are none or they don't.

    A trust file that matches no pin (pins changed in a new image, or the
    file was tampered with) is set aside as ``trust.pem.rejected`` so the
    agent fetches the chain again.
    """
    path = state_dir / TRUST_FILE
    try:
        pem = path.read_text()
    except FileNotFoundError:
        return None
    try:
        roots = pick_pinned_root(pem, pins)
    except TrustError as exc:
        log.warning(
            "stored %s no longer matches the pins (%s); fetching the chain again", path, exc
        )
        path.replace(path.with_name(TRUST_FILE + ".rejected"))
        return None
    return _pem(roots)


def fetch_pinned_roots(controller_url: str, pins: list[str], timeout: float) -> str:
    """Fetch the controller's chain WITHOUT verification and keep only pinned roots.

    Nothing else is sent to a server before this succeeds. Raises TrustError
    if no pin matches, or Unreachable if the server cannot be reached. The
    unverified context serves this one request on its own connection, and the
    answer's ``Date`` is not believed (nothing vouches for it yet).
    """
    channel = Channel(parse_controller_url(controller_url), _unverified_context(), timeout)
    try:
        resp = channel.exchange("GET", CHAIN_PATH, headers={"Accept": "application/x-pem-file"})
    except Unreachable as exc:
        raise Unreachable(
            f"cannot fetch the certificate chain from {controller_url}: {exc.message}"
        ) from exc
    finally:
        channel.close()
    if resp.status != 200:
        raise Unreachable(
            f"fetching the certificate chain from {controller_url} answered HTTP {resp.status}"
        )
    try:
        text = resp.body.decode()
    except UnicodeDecodeError as exc:
        raise TrustError(f"the chain from {controller_url} is not PEM text: {exc}") from exc
    return _pem(pick_pinned_root(text, pins))


def extend_trust(roots_pem: str, bundle: list[str], pins: list[str]) -> str:
    """The roots we trust now plus those in ``bundle`` that they vouch for (cross-signed).

    The bundle arrived over a connection verified against ``roots_pem``, but it still
    only adds roots a trusted root has signed for: a compromised transport cannot
    smuggle in an unrelated CA.
    """
    known = x509.load_pem_x509_certificates(roots_pem.encode()) if roots_pem else []
    anchors = list(pins) + [spki_pin(c.public_key()) for c in known if c.subject == c.issuer]
    return _pem(pick_pinned_root(roots_pem + "".join(bundle), anchors))


def _unverified_context() -> ssl.SSLContext:
    """TLS without verification, for the chain fetch only: the pins judge what comes back."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def save_trust(state_dir: Path, roots_pem: str) -> None:
    atomic_write(state_dir / TRUST_FILE, roots_pem)


def ssl_context(roots_pem: str) -> ssl.SSLContext:
    """A TLS 1.2+ client context trusting only ``roots_pem``, with hostname checks on.

    Built from a bare ``PROTOCOL_TLS_CLIENT`` context, never the system store:
    a certificate from any public CA must not pass for the controller's.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=roots_pem)
    return ctx
