"""Rotating the controller's signing keys (``controller/keyring.py``): list, rotate,
promote, retire. Each change is one transaction and an audit record, then the cache
epoch moves so every worker and replica picks the new keyring up without a restart.

- ``access``: a rotation makes a new key the signing key at once (only the controller
  verifies these tokens); the old one verifies until the longest-lived token it signed
  has expired (access-token lifetime + a minute), then it is dropped by itself.
- ``registry``: the registry reads its ``rootcertbundle`` at start, so a rotation only
  *stages* the new key: it joins the published bundle (``GET /registry/bundle``) but
  signs nothing until ``promote``, once the registry runs with the new bundle. The old
  key then stays in the bundle until the registry tokens it signed have expired.
- ``registration``: there is nothing to rotate. A registration token is its own
  256-bit secret stored as a hash; its key id is the token's name, not a signing key's,
  so tokens made before any rotation keep enrolling. Replace a token by creating a new
  one and revoking the old (``edgefleet tokens create`` / ``revoke``).

``retire`` refuses a previous key before its time is up (a suspected leak is the reason
to do it: devices holding tokens it signed get a 401 and fetch a new token once). A
retired key's material is erased from the database: at ``retire``, or at the next
rotation of its kind once its overlap has ended.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.keyring import (
    ACCESS,
    ACTIVE,
    PREVIOUS,
    REGISTRY,
    RETIRED,
    STAGED,
    registry_kid,
)
from edgefleet.controller.models import SigningKey, aware
from edgefleet.controller.pki import certs
from edgefleet.controller.pki.registry_key import new_certificate
from edgefleet.controller.roles import Operator
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit
from edgefleet.errors import BadRequest, Conflict, NotFound

REGISTRATION = "registration"
PURPOSES = (ACCESS, REGISTRY, REGISTRATION)
LEEWAY = timedelta(seconds=60)
"""Past a token's ``exp``: the registry allows 60 s of clock skew, and so do we."""
NO_REGISTRATION_KEY = (
    "registration tokens have no signing key to rotate: each token is its own secret, "
    "stored only as a hash and found by its key id, so no rotation could invalidate it. "
    "To replace a token, create a new one (`edgefleet tokens create`) and revoke the old "
    "(`edgefleet tokens revoke KID`)"
)


def _check_purpose(purpose: str) -> None:
    if purpose == REGISTRATION:
        raise BadRequest(NO_REGISTRATION_KEY, code="no_registration_key")
    if purpose not in (ACCESS, REGISTRY):
        raise NotFound(
            f"no signing key kind {purpose!r}; the kinds are access and registry",
            code="unknown_key_kind",
        )


def _iso(d: datetime | None) -> str | None:
    d = aware(d)
    return d.isoformat() if d else None


def list_keys(rt: Runtime) -> list[dict[str, Any]]:
    """Every key the keyring holds or held, newest last; never any key material."""
    rt.keyring.reload()
    access, registry = rt.keyring.access(), rt.keyring.registry()
    with Session(rt.engine) as s:
        rows = list(s.scalars(select(SigningKey).order_by(SigningKey.id)).all())
    out: list[dict[str, Any]] = []
    for purpose, file_kid in (
        (ACCESS, rt.keyring.file_access_kid),
        (REGISTRY, rt.keyring.file_registry.kid),
    ):
        mine = [r for r in rows if r.purpose == purpose]
        if all(r.kid != file_kid for r in mine):
            out.append(
                {"kind": purpose, "kid": file_kid, "state": ACTIVE, "source": "file"}
                | {"created_at": None, "retire_after": None}
            )
        for r in mine:
            state = r.state
            until = aware(r.retire_after)
            if state == PREVIOUS and until is not None and until <= datetime.now(UTC):
                state = RETIRED
            out.append(
                {
                    "kind": purpose,
                    "kid": r.kid,
                    "state": state,
                    "source": "file" if r.kid == file_kid else "database",
                    "created_at": _iso(r.created_at),
                    "retire_after": _iso(r.retire_after) if state == PREVIOUS else None,
                }
            )
    for entry in out:
        signing = access.kid if entry["kind"] == ACCESS else registry.signing.kid
        entry["signing"] = entry["kid"] == signing
    return out


def rotate(rt: Runtime, who: Operator, purpose: str) -> dict[str, Any]:
    """Access: a new signing key now. Registry: a staged key, in the bundle only."""
    _check_purpose(purpose)
    with session_scope(rt.engine) as s:
        if purpose == ACCESS:
            kid = secrets.token_hex(4)
            row = SigningKey(
                purpose=ACCESS,
                kid=kid,
                state=ACTIVE,
                material=rt.keyring.wrap.seal(kid, secrets.token_bytes(32)),
            )
            _demote(s, rt, ACCESS, rt.settings.access_token_ttl_seconds)
        else:
            staged = _rows(s, REGISTRY, STAGED)
            if staged:
                raise Conflict(
                    f"registry key {staged[0].kid} is staged already: give the registry the "
                    "bundle (`edgefleet keys bundle`), restart it, then `edgefleet keys "
                    "promote registry`",
                    code="rotation_staged",
                )
            key = certs.new_key()
            kid = registry_kid(key)
            der = key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            row = SigningKey(
                purpose=REGISTRY,
                kid=kid,
                state=STAGED,
                material=rt.keyring.wrap.seal(kid, der),
                certificate=certs.pem(new_certificate(key)),
            )
        s.add(row)
        audit.record(s, who, "key.rotate", kid, kind=purpose)
    _changed(rt)
    return {"kind": purpose, "kid": kid, "state": row.state}


def promote(rt: Runtime, who: Operator, purpose: str) -> dict[str, Any]:
    """Registry: the staged key signs from now on; the old one stays in the bundle."""
    _check_purpose(purpose)
    if purpose != REGISTRY:
        raise BadRequest(
            "only registry keys are staged; `edgefleet keys rotate access` takes effect at once",
            code="nothing_staged",
        )
    with session_scope(rt.engine) as s:
        staged = _rows(s, REGISTRY, STAGED)
        if not staged:
            raise Conflict(
                "no registry key is staged; run `edgefleet keys rotate registry` first",
                code="nothing_staged",
            )
        _demote(s, rt, REGISTRY, rt.settings.registry_token_ttl_seconds)
        staged[0].state = ACTIVE
        kid = staged[0].kid
        audit.record(s, who, "key.promote", kid, kind=purpose)
    _changed(rt)
    return {"kind": purpose, "kid": kid, "state": ACTIVE}


def retire(rt: Runtime, who: Operator, purpose: str, kid: str) -> dict[str, Any]:
    """Refuse a previous (or staged) key from now on, before its time is up."""
    _check_purpose(purpose)
    rt.keyring.reload()  # a rotation another worker made may not have reached this one yet
    signing = rt.keyring.access().kid if purpose == ACCESS else rt.keyring.registry().signing.kid
    with session_scope(rt.engine) as s:
        row = s.scalars(
            select(SigningKey).where(SigningKey.purpose == purpose, SigningKey.kid == kid)
        ).first()
        if kid == signing or (row is not None and row.state == ACTIVE):
            raise Conflict(
                f"{purpose} key {kid} is the signing key; rotate first, then retire it",
                code="key_in_use",
            )
        if row is None:
            raise NotFound(f"no {purpose} key {kid} (see `edgefleet keys list`)", code="no_key")
        row.state, row.material = RETIRED, None
        audit.record(s, who, "key.retire", kid, kind=purpose)
    _changed(rt)
    return {"kind": purpose, "kid": kid, "state": RETIRED}


def _rows(s: Session, purpose: str, state: str) -> list[SigningKey]:
    return list(
        s.scalars(
            select(SigningKey)
            .where(SigningKey.purpose == purpose, SigningKey.state == state)
            .with_for_update()
        ).all()
    )


def _demote(s: Session, rt: Runtime, purpose: str, ttl_seconds: int) -> None:
    """The signing key becomes previous: it verifies until all it signed has expired.
    The first key lives in its file; a row without material stands for it."""
    now = datetime.now(UTC)
    for row in _rows(s, purpose, PREVIOUS):  # overlaps that ended: drop their material
        ended = aware(row.retire_after)
        if ended is not None and ended <= now:
            row.state, row.material = RETIRED, None
    until = now + timedelta(seconds=ttl_seconds) + LEEWAY
    active = _rows(s, purpose, ACTIVE)
    for row in active:
        row.state, row.retire_after = PREVIOUS, until
    if not active:
        file_kid = rt.keyring.file_access_kid if purpose == ACCESS else rt.keyring.file_registry.kid
        known = s.scalars(
            select(SigningKey).where(SigningKey.purpose == purpose, SigningKey.kid == file_kid)
        ).first()
        if known is None:
            s.add(SigningKey(purpose=purpose, kid=file_kid, state=PREVIOUS, retire_after=until))


def _changed(rt: Runtime) -> None:
    """Every worker and replica reloads; this one at once, so the answer is true here."""
    rt.changed()
    rt.keyring.reload()
