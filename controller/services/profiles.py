"""Cluster profiles: validated documents stored as immutable, numbered revisions.

A revision's ``spec`` is the profile document without its ``name`` (the name is the
profile's); the schema (``edgefleet.profilespec``) checks the whole document. Applying
the same content again makes no revision."""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable
from typing import Any, ClassVar

from sqlalchemy import select
from sqlmodel import Session

from edgefleet import profilespec
from edgefleet.controller.db import session_scope
from edgefleet.controller.models import Profile, ProfileRevision, aware
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.rollouts.store import active_rollout
from edgefleet.controller.services import audit
from edgefleet.errors import ApiError, Conflict, Forbidden, NotFound


class InvalidProfile(ApiError):
    """The document breaks the schema; the message lists every problem with its path."""

    status: ClassVar[int] = 422
    default_code = "invalid_profile"


def spec_digest(spec: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def apply_profile(
    engine: Any,
    who: Operator,
    name: str,
    spec: dict[str, Any],
    pin: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    hold: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Store ``spec`` as the profile's next revision; the same content again makes none.

    ``pin`` turns model tags into digests (``model_pins``) once the document is valid.
    With ``hold``, the profile's followers keep the revision they get now (a rollout
    brings them the new one in waves); a profile already held stays held either way.
    Returns the profile and whether a revision was made. An invalid document is refused
    (422 ``invalid_profile``) and nothing is stored.
    """
    check(name, spec)
    commands = exec_commands(spec)
    if commands and who.role != Role.admin:
        raise Forbidden(
            f"profile {name!r} has exec health checks ({_argvs(commands)}); they run commands "
            "on every device that follows it, so only an admin may apply them",
            code="exec_checks_need_admin",
        )
    spec = {k: v for k, v in spec.items() if k != "name"}
    if pin is not None:
        spec = pin(spec)
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
        if hold and profile.released_revision is None and profile.latest_revision:
            profile.released_revision = profile.latest_revision
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
        audit.record(
            s,
            who,
            "profile.apply",
            name,
            revision=profile.latest_revision,
            released=profile.released_revision,
        )
        if commands:
            audit.record(
                s,
                who,
                "profile.exec_checks",
                name,
                revision=profile.latest_revision,
                commands=commands,
            )
        return _public(profile), True


def exec_commands(spec: dict[str, Any]) -> list[list[str]]:
    """The argv of every exec health check in a (valid) profile document."""
    checks = spec.get("policies", {}).get("health_checks", [])
    return [c["command"] for c in checks if c["type"] == "exec"]


def _argvs(commands: list[list[str]]) -> str:
    return "; ".join(" ".join(argv) for argv in commands)


def check(name: str, spec: dict[str, Any]) -> None:
    problems = []
    if "name" in spec and spec["name"] != name:
        problems.append(("/name", f"the document's name {spec['name']!r} is not {name!r}"))
    problems += profilespec.errors({**spec, "name": name})
    if problems:
        raise InvalidProfile(f"profile {name!r} is invalid: {profilespec.describe(problems)}")


def _revision(s: Session, profile: Profile, number: int) -> ProfileRevision | None:
    return s.scalars(
        select(ProfileRevision).where(
            ProfileRevision.profile_id == profile.id, ProfileRevision.number == number
        )
    ).first()


def release(
    engine: Any, who: Operator, name: str, revision: int | None, reason: str
) -> dict[str, Any]:
    """Give the profile's followers ``revision`` (None: the latest, from now on), at once;
    refused while a rollout of the profile runs, since it moves that revision itself."""
    with session_scope(engine) as s:
        profile = s.scalars(select(Profile).where(Profile.name == name).with_for_update()).first()
        if profile is None:
            raise NotFound(f"no profile {name!r}", code="no_profile")
        if revision is not None:
            revision_or_404(s, profile, revision)
        busy = active_rollout(s, profile.id)  # type: ignore[arg-type]
        if busy is not None:
            raise Conflict(
                f"rollout {busy} of profile {name!r} is moving its followers; pause and roll "
                "it back, or let it complete, before releasing a revision by hand",
                code="rollout_active",
            )
        before = profile.followed_revision
        profile.released_revision = revision
        audit.record(
            s, who, "profile.release", name, revision=revision, before=before, reason=reason
        )
        return {**_public(profile), "changed": profile.followed_revision != before}


def _public(p: Profile) -> dict[str, Any]:
    return {"name": p.name, "revision": p.latest_revision, "released_revision": p.released_revision}


def document(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, **{k: v for k, v in spec.items() if k != "name"}}


def _revision_public(profile: Profile, rev: ProfileRevision) -> dict[str, Any]:
    created = aware(rev.created_at)
    return {
        "name": profile.name,
        "revision": rev.number,
        "latest_revision": profile.latest_revision,
        "released_revision": profile.released_revision,
        "digest": rev.digest,
        "spec": rev.spec,
        "created_at": created.isoformat() if created else None,
        "created_by": rev.created_by,
    }


def revision_or_404(s: Session, profile: Profile, number: int) -> ProfileRevision:
    rev = _revision(s, profile, number)
    if rev is None:
        raise NotFound(
            f"profile {profile.name!r} has no revision {number} "
            f"(revisions 1 to {profile.latest_revision})",
            code="no_revision",
        )
    return rev


def get_profile(engine: Any, name: str, revision: int | None = None) -> dict[str, Any]:
    """One revision of a profile (the latest unless ``revision`` is given)."""
    with Session(engine) as s:
        profile = profile_by_name(s, name)
        number = profile.latest_revision if revision is None else revision
        return _revision_public(profile, revision_or_404(s, profile, number))


def diff_profile(engine: Any, name: str, a: int | None, b: int | None) -> dict[str, Any]:
    """A unified diff of two revisions' canonical YAML (default: the latest two)."""
    with Session(engine) as s:
        profile = profile_by_name(s, name)
        b = profile.latest_revision if b is None else b
        a = max(b - 1, 1) if a is None else a
        specs = [revision_or_404(s, profile, n).spec for n in (a, b)]
    texts = [profilespec.canonical_yaml(document(name, spec)) for spec in specs]
    lines = difflib.unified_diff(
        texts[0].splitlines(keepends=True),
        texts[1].splitlines(keepends=True),
        fromfile=f"{name}@{a}",
        tofile=f"{name}@{b}",
    )
    return {"name": name, "a": a, "b": b, "diff": "".join(lines)}


def list_profiles(engine: Any) -> list[dict[str, Any]]:
    with Session(engine) as s:
        return [_public(p) for p in s.scalars(select(Profile).order_by(Profile.name))]


def profile_by_name(s: Session, name: str) -> Profile:
    p = s.scalars(select(Profile).where(Profile.name == name)).first()
    if p is None:
        raise NotFound(f"no profile {name!r}", code="no_profile")
    return p
