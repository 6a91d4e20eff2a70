"""Operators: users with a role and API tokens (hashed at rest)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from edgefleet.controller import bearer
from edgefleet.controller.db import session_scope
from edgefleet.controller.models import ApiToken, Site, User
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.services import audit, console_sessions, passwords
from edgefleet.controller.services.sites import site_by_name
from edgefleet.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
SYSTEM = Operator("system", Role.admin)


def _public(u: User, site: str | None) -> dict[str, Any]:
    return {
        "username": u.username,
        "role": u.role,
        "site": site,
        "disabled": u.disabled,
        "password": bool(u.password_hash),
    }


def create_user(
    engine: Any, who: Operator, username: str, role: str, site: str | None = None
) -> dict[str, Any]:
    """Create a user and their first API token; the answer holds the token, shown once."""
    if not USERNAME.match(username):
        raise BadRequest(
            "usernames are 1-64 characters of a-z 0-9 . _ @ -, starting with a letter or digit",
            code="bad_username",
        )
    if role not in Role.__members__:
        raise BadRequest(f"unknown role {role!r}; one of {', '.join(Role)}", code="bad_role")
    if (role == Role.installer) != (site is not None):
        raise BadRequest("an installer needs --site, and only an installer", code="bad_site")
    secret = bearer.new_secret(bearer.OPERATOR)
    try:
        with session_scope(engine) as s:
            site_row = site_by_name(s, site) if site else None
            user = User(username=username, role=role, site_id=site_row.id if site_row else None)
            s.add(user)
            s.flush()
            s.add(ApiToken(kid=secret.kid, secret_hash=secret.hash, user_id=user.id))  # type: ignore[arg-type]
            audit.record(s, who, "user.create", username, role=role, site=site)
            out = _public(user, site)
    except IntegrityError as exc:
        raise Conflict(f"user {username!r} exists already", code="exists") from exc
    out["api_token"] = str(secret)
    return out


@dataclass(frozen=True)
class FirstAdmin:
    """What ``bootstrap_admin`` made up and must be printed once (None: given or none)."""

    token: str | None = None
    password: str | None = None


def bootstrap_admin(engine: Any, token: str | None, password: str | None = None) -> FirstAdmin:
    """Create the first admin if there is no user yet, with an API token and a console
    password. What came from the environment (or a Secret) is installed; what did not is
    made up and returned, to be printed once. Nothing happens once any user exists.
    """
    with session_scope(engine) as s:
        if s.scalar(select(func.count()).select_from(User)):
            return FirstAdmin()
        if token is not None:
            secret = bearer.parse_secret(token, bearer.OPERATOR)
            if secret is None:
                raise BadRequest(
                    "EDGEFLEET_BOOTSTRAP_ADMIN_TOKEN must look like efo.<kid>.<secret>; "
                    'make one with `python -c \'import secrets; print("efo." + '
                    'secrets.token_hex(6) + "." + secrets.token_urlsafe(32))\'`',
                    code="bad_token",
                )
        else:
            secret = bearer.new_secret(bearer.OPERATOR)
        made_password = None
        if password is None:
            password = made_password = secrets.token_urlsafe(12)
        passwords.check_strength(password)
        user = User(
            username="admin", role=Role.admin, password_hash=passwords.hash_password(password)
        )
        s.add(user)
        s.flush()
        s.add(ApiToken(kid=secret.kid, secret_hash=secret.hash, user_id=user.id))  # type: ignore[arg-type]
        audit.record(s, SYSTEM, "user.bootstrap", "admin")
    return FirstAdmin(None if token is not None else str(secret), made_password)


def list_users(engine: Any) -> list[dict[str, Any]]:
    with Session(engine) as s:
        rows = s.execute(
            select(User, Site.name).outerjoin(Site, Site.id == User.site_id).order_by(User.username)
        ).all()
    return [_public(u, site) for u, site in rows]


def disable_user(engine: Any, who: Operator, username: str) -> dict[str, Any]:
    with session_scope(engine) as s:
        user = s.scalars(select(User).where(User.username == username)).first()
        if user is None:
            raise NotFound(f"no user {username!r}", code="no_user")
        if user.username == who.username:
            raise Conflict("you cannot disable yourself", code="self")
        user.disabled = True
        console_sessions.end_sessions_of(s, user.id)  # type: ignore[arg-type]
        audit.record(s, who, "user.disable", username)
        site = s.get(Site, user.site_id) if user.site_id else None
        return _public(user, site.name if site else None)


def authenticate(engine: Any, token: str, remote_addr: str) -> Operator:
    """The operator behind an API token, or Unauthorized."""
    secret = bearer.parse_secret(token, bearer.OPERATOR)
    if secret is None:
        raise Unauthorized("not an operator API token", code="invalid_token")
    with Session(engine) as s:
        row = s.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.kid == secret.kid)
        ).first()
    if row is None or not bearer.matches(secret, row[0].secret_hash):
        raise Unauthorized("unknown operator API token", code="invalid_token")
    user = row[1]
    if user.disabled:
        raise Unauthorized(f"user {user.username} is disabled", code="user_disabled")
    return Operator(user.username, Role(user.role), user.site_id, remote_addr)


def set_password(
    engine: Any, who: Operator, username: str, password: str, current: str | None = None
) -> dict[str, Any]:
    """Set a console password: an admin for anyone, everyone else only their own, and
    then only with their current one. Every session of that user ends."""
    own = who.username == username
    if not own and who.role != Role.admin:
        raise Forbidden("only an admin sets another user's password", code="role")
    passwords.check_strength(password)
    with session_scope(engine) as s:
        user = s.scalars(select(User).where(User.username == username)).first()
        if user is None:
            raise NotFound(f"no user {username!r}", code="no_user")
        if (
            own
            and who.role != Role.admin
            and not passwords.verify_password(current or "", user.password_hash)
        ):
            raise Unauthorized("your current password is wrong", code="bad_login")
        user.password_hash = passwords.hash_password(password)
        ended = console_sessions.end_sessions_of(s, user.id)  # type: ignore[arg-type]
        audit.record(s, who, "user.password", username, sessions_ended=ended)
        site = s.get(Site, user.site_id) if user.site_id else None
        return _public(user, site.name if site else None)
