"""Registration tokens: created (secret shown once, and its QR label if asked), listed,
revoked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field
from sqlalchemy import func, select
from sqlmodel import Session

from edgefleet.controller import bearer
from edgefleet.controller.db import session_scope
from edgefleet.controller.models import Device, Profile, RegistrationToken, Site, aware
from edgefleet.controller.roles import Operator
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit, enrolment_codes, replacement
from edgefleet.controller.services.profiles import profile_by_name
from edgefleet.controller.services.sites import site_by_name
from edgefleet.errors import BadRequest, NotFound
from edgefleet.wire import Registration, Strict


class TokenCreate(Strict):
    site: str | None = None
    """Required, unless the token replaces a device: then it is that device's site."""
    profile: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    description: str = Field(default="", max_length=256)
    expires_in_seconds: int | None = Field(default=7 * 86400, ge=60)
    """None: never expires (discouraged)."""
    max_uses: int | None = Field(default=None, ge=1)
    require_approval: bool | None = None
    """None: the default, which is no approval for a plain token and approval for one
    with a QR code (a label can be read by anybody who passes by)."""
    qr: bool = False
    """Also make a short enrolment code and answer its QR payload and printable label."""
    allowed_serials: list[str] = Field(default_factory=list, max_length=10000)
    allowed_hardware_ids: list[str] = Field(default_factory=list, max_length=10000)
    replaces: str | None = Field(default=None, max_length=40)
    """Replacement mode: the device that enrols with this token takes this device's
    place (``services/replacement.py``) with no operator step, or at approval. One use."""


def _devices_enrolled(token_id: Any) -> Any:
    """How many devices a token enrolled: its uses, counted where they are (only a
    limited token keeps a counter, to spend its last use atomically)."""
    return select(func.count(Device.id)).where(Device.token_id == token_id).scalar_subquery()


def public(t: RegistrationToken, site: str, profile: str | None, uses: int = 0) -> dict[str, Any]:
    def iso(d: datetime | None) -> str | None:
        d = aware(d)
        return d.isoformat() if d else None

    return {
        "kid": t.kid,
        "site": site,
        "profile": profile,
        "labels": t.labels,
        "description": t.description,
        "expires_at": iso(t.expires_at),
        "max_uses": t.max_uses,
        "uses": uses,
        "require_approval": t.require_approval,
        "enrolment_code": t.code_hash is not None,
        "allowed_serials": t.allowed_serials,
        "allowed_hardware_ids": t.allowed_hardware_ids,
        "revoked_at": iso(t.revoked_at),
        "created_at": iso(t.created_at),
        "created_by": t.created_by,
        "replaces": t.replaces,
    }


def create_token(rt: Runtime, who: Operator, req: TokenCreate) -> dict[str, Any]:
    """Make a token; the answer is the only place its secret ever appears."""
    _check_mode(rt, who, req)
    secret = bearer.new_secret(bearer.REGISTRATION)
    approval = req.qr if req.require_approval is None else req.require_approval
    expires = (
        datetime.now(UTC) + timedelta(seconds=req.expires_in_seconds)
        if req.expires_in_seconds
        else None
    )
    registration = Registration(
        controller_url=rt.settings.effective_public_url,
        controller_id=rt.controller_id,
        root_pins=rt.authority.root_pins,
        token=str(secret),
    )
    code = enrolment_codes.new_code() if req.qr else None
    # The label is drawn before the transaction, so nothing is stored if drawing fails.
    qr = (
        enrolment_codes.qr_answer(
            registration.controller_url,
            code,
            registration.root_pins,
            site=req.site,
            kid=secret.kid,
            expires_at=expires.isoformat() if expires else None,
            require_approval=approval,
        )
        if code
        else None
    )
    with session_scope(rt.engine) as s:
        if req.replaces is not None:
            replacement.check_replaceable(s, req.replaces, lock=True)
        site = site_by_name(s, req.site or "")
        profile = profile_by_name(s, req.profile) if req.profile else None
        token = RegistrationToken(
            kid=secret.kid,
            secret_hash=secret.hash,
            site_id=site.id,  # type: ignore[arg-type]
            profile_id=profile.id if profile else None,
            labels=req.labels,
            description=req.description,
            expires_at=expires,
            max_uses=req.max_uses,
            require_approval=approval,
            allowed_serials=req.allowed_serials,
            allowed_hardware_ids=req.allowed_hardware_ids,
            created_by=who.username,
            code_hash=enrolment_codes.code_hash(code) if code else None,
            replaces=req.replaces,
        )
        s.add(token)
        s.flush()
        audit.record(
            s,
            who,
            "token.create",
            token.kid,
            site=site.name,
            qr=bool(code),
            **({"replaces": req.replaces} if req.replaces else {}),
        )
        out = public(token, site.name, profile.name if profile else None)
    out["token"] = str(secret)
    out["registration"] = registration.model_dump()
    if qr is not None:
        out["qr"] = qr
    return out


def _check_mode(rt: Runtime, who: Operator, req: TokenCreate) -> None:
    """A plain token names its site; a replacement token enrols one device at the
    replaced device's site, and the device takes that one's profile and labels (the
    token's own labels add keys)."""
    if req.replaces is None:
        if not req.site:
            raise BadRequest("a token needs a site (or a device it replaces)", code="no_site")
        return
    with Session(rt.engine) as s:
        old = replacement.check_replaceable(s, req.replaces)
        if not who.may_act_at(old.site_id):
            raise NotFound(f"no device {req.replaces}", code="unknown_device")
        site = s.get(Site, old.site_id)
        assert site is not None
    if req.site is not None and req.site != site.name:
        raise BadRequest(
            f"device {old.id} is at site {site.name}, not {req.site}: a replacement token "
            "enrols at the replaced device's site (leave the site out)",
            code="other_site",
        )
    req.site = site.name
    if req.max_uses is None:
        req.max_uses = 1
    if req.max_uses != 1:
        raise BadRequest(
            f"a replacement token enrols one device, not {req.max_uses}", code="bad_uses"
        )
    if req.profile is not None:
        raise BadRequest(
            "a replacement token gives the device the replaced one's profile; leave the "
            "profile out (or assign another after)",
            code="bad_profile",
        )


def list_tokens(rt: Runtime) -> list[dict[str, Any]]:
    with Session(rt.engine) as s:
        rows = s.execute(
            select(
                RegistrationToken, Site.name, Profile.name, _devices_enrolled(RegistrationToken.id)
            )
            .join(Site, Site.id == RegistrationToken.site_id)
            .outerjoin(Profile, Profile.id == RegistrationToken.profile_id)
            .order_by(RegistrationToken.created_at)
        ).all()
    return [public(t, site, profile, uses) for t, site, profile, uses in rows]


def revoke_token(rt: Runtime, who: Operator, kid: str) -> dict[str, Any]:
    with session_scope(rt.engine) as s:
        token = s.scalars(
            select(RegistrationToken).where(RegistrationToken.kid == kid).with_for_update()
        ).first()
        if token is None:
            raise NotFound(f"no registration token {kid}", code="no_token")
        if token.revoked_at is None:
            token.revoked_at = datetime.now(UTC)
            audit.record(s, who, "token.revoke", kid)
        site = s.get(Site, token.site_id)
        profile = s.get(Profile, token.profile_id) if token.profile_id else None
        uses = s.scalar(select(_devices_enrolled(token.id)))
        return public(token, site.name if site else "", profile.name if profile else None, uses)
