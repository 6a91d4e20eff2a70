"""The controller's PKI: a root and two intermediates, keys private to their owner, a
server certificate for the configured names, device certificates from P-256 CSRs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.controller.pki.authority import (
    load_authority,
    load_or_create_authority,
    parse_device_csr,
)
from edgefleet.errors import BadRequest
from edgefleet.signing import cert_pin, pick_pinned_root
from tests.support.apiclient import csr_for, new_key


def _verify(child: x509.Certificate, parent: x509.Certificate) -> None:
    child.verify_directly_issued_by(parent)


def test_hierarchy_has_separate_intermediates_and_private_keys(tmp_path: Path) -> None:
    auth = load_or_create_authority(tmp_path / "pki", ["localhost", "127.0.0.1"])
    assert auth.server_ca.subject != auth.device_ca.subject
    assert auth.server_ca.public_key() != auth.device_ca.public_key()
    _verify(auth.server_ca, auth.root)
    _verify(auth.device_ca, auth.root)
    server = x509.load_pem_x509_certificates((tmp_path / "pki" / "server.pem").read_bytes())
    _verify(server[0], auth.server_ca)
    sans = server[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n) for n in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    keys = sorted(p.name for p in (tmp_path / "pki").glob("*.key"))
    assert keys == ["device-ca.key", "root.key", "server-ca.key", "server.key"]
    for key in (tmp_path / "pki").glob("*.key"):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key


def test_second_start_keeps_the_root_and_reissues_server_cert_for_new_names(
    tmp_path: Path,
) -> None:
    first = load_or_create_authority(tmp_path / "pki", ["localhost"])
    server_before = (tmp_path / "pki" / "server.pem").read_bytes()
    again = load_or_create_authority(tmp_path / "pki", ["localhost"])
    assert again.root_pin == first.root_pin
    assert (tmp_path / "pki" / "server.pem").read_bytes() == server_before
    renamed = load_or_create_authority(tmp_path / "pki", ["localhost", "fleet.example"])
    assert renamed.root_pin == first.root_pin
    assert (tmp_path / "pki" / "server.pem").read_bytes() != server_before


def test_device_certificate_names_device_for_client_auth_and_is_backdated(
    tmp_path: Path,
) -> None:
    load_or_create_authority(tmp_path / "pki", ["localhost"])
    auth = load_authority(tmp_path / "pki")
    key = new_key()
    csr, pin = parse_device_csr(csr_for(key))
    chain_pem, not_after = auth.sign_device(csr.public_key(), "dev-123", timedelta(days=30))
    cert, intermediate = x509.load_pem_x509_certificates(chain_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-123"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert intermediate == auth.device_ca
    _verify(cert, auth.device_ca)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 * 86400 + 7000 < lifetime.total_seconds() < 30 * 86400 + 7300  # 2 h back-dated
    assert not_after == cert.not_valid_after_utc
    assert pin.startswith("sha256:") and len(pin) == 71


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: rsa.generate_private_key(65537, 2048),
        lambda: ec.generate_private_key(ec.SECP384R1()),
    ],
    ids=["rsa2048", "p384"],
)
def test_csr_with_other_key_types_is_refused(make_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadRequest) as err:
        parse_device_csr(csr_for(make_key()))
    assert err.value.code == "csr_key_type"


def test_chain_offered_to_agents_passes_its_own_pin(tmp_path: Path) -> None:
    auth = load_or_create_authority(tmp_path / "pki", ["localhost"])
    assert pick_pinned_root(auth.chain_pem, [auth.root_pin]) == [auth.root]


def test_cli_pin_prints_root_spki_pin(tmp_path: Path) -> None:
    auth = load_or_create_authority(tmp_path / "data" / "pki", ["localhost"])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "controller",
            "pin",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == auth.root_pin == cert_pin(auth.root)
