"""The controller's signing keys, rotated without a restart and without re-enrolment.

Two keys sign what the controller hands out: the device access-token key (HS256) and
the registry token key (ES256, trusted by the registry through its
``rootcertbundle``). Each starts as a file in the data directory (``access-token.key``,
``pki/registry-token.key``), which is how the Helm chart's Secret provides them. A
rotation adds a row to the ``signingkey`` table, so every worker and every replica
reads the same keyring: after the rotating call commits it bumps the cache epoch, and
each worker reloads the keyring on its next call (at most once a second while the
epoch keeps moving), or at once when a token names a key id it does not know.

A key's life: ``staged`` (registry only: in the bundle the registry is given, not yet
signing, because the registry reads its bundle at start), ``active`` (signs),
``previous`` (still verifies, until ``retire_after``: when everything it signed has
expired), ``retired`` (refused). The material of rotated keys is wrapped with AES-GCM
under a key derived (HKDF) from ``access-token.key``, which every replica holds; a
copy of the database alone signs nothing.

Registration tokens have no signing key: each is its own 256-bit secret, stored as a
hash and found by its key id, so no rotation can invalidate them (see
``services/key_rotation.py``).
"""

from __future__ import annotations

import base64
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from edgefleet.controller.access import load_or_create_key
from edgefleet.controller.cachebus import Epoch
from edgefleet.controller.models import SigningKey, aware
from edgefleet.controller.pki.registry_key import TokenKey, libtrust_key_id, load_token_key
from edgefleet.controller.settings import Settings
from edgefleet.errors import ConfigError

ACCESS = "access"
REGISTRY = "registry"
STAGED, ACTIVE, PREVIOUS, RETIRED = "staged", "active", "previous", "retired"
RELOAD_EVERY_S = 1.0
"""While the epoch keeps moving (approvals, assignments, rollout waves bump it), reload at
most this often."""
UNKNOWN_KID_RELOAD_S = 0.2
"""A token with a key id this worker does not know triggers a reload at most this often,
so garbage key ids cannot turn into a database query each."""


@dataclass(frozen=True)
class AccessKeys:
    """The access-token keys one worker uses: one signs, all listed verify."""

    kid: str
    key: bytes
    accepted: dict[str, tuple[bytes, float | None]] = field(default_factory=dict)
    """kid -> (key, unix time after which it is refused; None: no limit)."""


@dataclass(frozen=True)
class RegistryKeys:
    signing: TokenKey
    bundle: list[x509.Certificate]
    """Certificates the registry must trust now: signing, staged and previous keys."""

    def bundle_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.bundle)


class Wrap:
    """AES-GCM under a key derived from the access-token file key (the key id is bound
    as associated data, so a wrapped key cannot be moved to another row)."""

    def __init__(self, file_key: bytes) -> None:
        hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=b"edgefleet keyring wrap v1")
        self._aead = AESGCM(hkdf.derive(file_key))

    def seal(self, kid: str, plain: bytes) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, plain, kid.encode())).decode()

    def open(self, kid: str, sealed: str) -> bytes:
        raw = base64.b64decode(sealed)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], kid.encode())
        except InvalidTag as exc:
            raise ConfigError(
                f"signing key {kid} in the database does not open with this data directory's "
                "access-token.key: every replica needs the same access-token.key (copy it "
                "from the first, or from the Helm chart's PKI Secret)"
            ) from exc


class Keyring:
    """This worker's view of the signing keys; ``stale()`` is the cache epoch's hook."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings, self._engine = settings, engine
        self.file_access_kid, self._file_access_key = load_or_create_key(settings.data_dir)
        self.wrap = Wrap(self._file_access_key)
        self.file_registry = load_token_key(
            settings.data_dir / "pki", settings.key_passphrase_bytes()
        )
        self._lock = threading.Lock()
        self._stale = False
        self._epoch: Epoch | None = None
        self._loaded_at = 0.0
        self._access: AccessKeys
        self._registry: RegistryKeys
        self._load()

    def follow(self, epoch: Epoch) -> None:
        """Reload when the cache epoch moves; every read of the keyring checks it, so an
        operator call (a registry token) sees a rotation as soon as a device call would."""
        self._epoch = epoch
        epoch.subscribe(self.stale)

    def stale(self) -> None:
        self._stale = True

    def access(self, check_epoch: bool = False) -> AccessKeys:
        """The verify path passes False: device calls check the epoch just before."""
        self._maybe_reload(check_epoch)
        return self._access

    def registry(self) -> RegistryKeys:
        self._maybe_reload(True)
        return self._registry

    def reload_for_unknown_kid(self) -> AccessKeys:
        """A token names a key id this worker has not seen: perhaps a rotation on another
        worker or replica whose epoch has not reached us yet."""
        if time.monotonic() - self._loaded_at >= UNKNOWN_KID_RELOAD_S:
            self._load()
        return self._access

    def reload(self) -> None:
        self._load()

    def _maybe_reload(self, check_epoch: bool) -> None:
        if check_epoch and self._epoch is not None:
            self._epoch.check()
        if self._stale and time.monotonic() - self._loaded_at >= RELOAD_EVERY_S:
            self._load()

    def _load(self) -> None:
        with self._lock:
            self._stale = False
            self._loaded_at = time.monotonic()
            with Session(self._engine) as s:
                rows = list(s.scalars(select(SigningKey).where(SigningKey.state != RETIRED)).all())
                retired = set(
                    s.scalars(select(SigningKey.kid).where(SigningKey.state == RETIRED)).all()
                )
            self._access = self._access_keys([r for r in rows if r.purpose == ACCESS], retired)
            self._registry = self._registry_keys(
                [r for r in rows if r.purpose == REGISTRY], retired
            )

    def _access_keys(self, rows: list[SigningKey], retired: set[str]) -> AccessKeys:
        accepted: dict[str, tuple[bytes, float | None]] = {}
        signing: tuple[str, bytes] | None = None
        noted = {r.kid for r in rows}
        if self.file_access_kid not in noted and self.file_access_kid not in retired:
            accepted[self.file_access_kid] = (self._file_access_key, None)
        now = time.time()
        for r in sorted(rows, key=lambda r: r.id or 0):
            until = _until(r)
            if r.state == PREVIOUS and until is not None and until <= now:
                continue  # everything it signed has expired
            key = self._file_access_key if r.material is None else self.wrap.open(r.kid, r.material)
            if r.state == ACTIVE:
                signing = (r.kid, key)
                accepted[r.kid] = (key, None)
            elif r.state == PREVIOUS:
                accepted[r.kid] = (key, until)
        if signing is None:
            if self.file_access_kid not in accepted:
                raise ConfigError(
                    "no access-token key is active: the file key was rotated away but no "
                    "rotated key is active; run `edgefleet keys rotate access`"
                )
            signing = (self.file_access_kid, self._file_access_key)
        return AccessKeys(signing[0], signing[1], accepted)

    def _registry_keys(self, rows: list[SigningKey], retired: set[str]) -> RegistryKeys:
        file_kid = self.file_registry.kid
        signing: TokenKey | None = None
        bundle: list[x509.Certificate] = []
        now = time.time()
        noted = {r.kid for r in rows}
        if file_kid not in noted and file_kid not in retired:
            bundle.append(self.file_registry.certificate)
        for r in sorted(rows, key=lambda r: r.id or 0):
            until = _until(r)
            if r.state == PREVIOUS and until is not None and until <= now:
                continue
            if r.material is None:
                token_key = self.file_registry
            else:
                key = serialization.load_der_private_key(
                    self.wrap.open(r.kid, r.material), password=None
                )
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                cert = x509.load_pem_x509_certificate((r.certificate or "").encode())
                token_key = TokenKey(key, cert, self.file_registry.bundle)
            bundle.append(token_key.certificate)
            if r.state == ACTIVE:
                signing = token_key
        if signing is None:
            if file_kid not in noted and file_kid not in retired:
                signing = self.file_registry
            else:
                raise ConfigError(
                    "no registry token key is active: run `edgefleet keys rotate registry` "
                    "and `edgefleet keys promote registry`"
                )
        return RegistryKeys(signing, bundle)


def _until(row: SigningKey) -> float | None:
    at = aware(row.retire_after)
    return at.timestamp() if at is not None else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def registry_kid(key: ec.EllipticCurvePrivateKey) -> str:
    return libtrust_key_id(key.public_key())
