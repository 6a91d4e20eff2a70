"""A minimal profile record (name, numbered revisions) for tokens to bind and desired
state to name. The cluster-profile issue grows the spec and its schema."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.models import Profile, ProfileRevision
from edgefleet.controller.roles import Operator
from edgefleet.controller.services import audit
from edgefleet.errors import NotFound


def spec_digest(spec: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def apply_profile(
    engine: Any, who: Operator, name: str, spec: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Store ``spec`` as the profile's next revision; the same content again makes none.

    Returns the profile and whether a revision was made.
    """
    digest = spec_digest(spec)
    with session_scope(engine) as s:
        profile = s.scalars(select(Profile).where(Profile.name == name).with_for_update()).first()
        if profile is None:
            profile = Profile(name=name)
            s.add(profile)
            s.flush()
        latest = _revision(s, profile, profile.latest_revision)
        if latest is not None and latest.digest == digest:
            return _public(profile), False
        profile.latest_revision += 1
        s.add(
            ProfileRevision(
                profile_id=profile.id,  # type: ignore[arg-type]
                number=profile.latest_revision,
                digest=digest,
                spec=spec,
                created_by=who.username,
            )
        )
        audit.record(s, who, "profile.apply", name, revision=profile.latest_revision)
        return _public(profile), True


def _revision(s: Session, profile: Profile, number: int) -> ProfileRevision | None:
    return s.scalars(
        select(ProfileRevision).where(
            ProfileRevision.profile_id == profile.id, ProfileRevision.number == number
        )
    ).first()


def _public(p: Profile) -> dict[str, Any]:
    return {"name": p.name, "revision": p.latest_revision}


def list_profiles(engine: Any) -> list[dict[str, Any]]:
    with Session(engine) as s:
        return [_public(p) for p in s.scalars(select(Profile).order_by(Profile.name))]


def profile_by_name(s: Session, name: str) -> Profile:
    p = s.scalars(select(Profile).where(Profile.name == name)).first()
    if p is None:
        raise NotFound(f"no profile {name!r}", code="no_profile")
    return p
