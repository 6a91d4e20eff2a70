"""Console logins: a password checked once, then a session held in a cookie.

The cookie carries a random secret; the database keeps only its SHA-256, so a copy of
the database logs nobody in. Each session has its own CSRF token, which every form
carries and every POST must echo. A session is looked up, with its user, on every
request: disabling a user or deleting the session ends it at once on every replica,
which a signed cookie could not do.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.models import ConsoleSession, User, aware
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import audit, passwords
from edgefleet.errors import Unauthorized

TOUCH_EVERY = timedelta(minutes=1)
"""How stale ``last_seen_at`` may get: an idle check needs minutes, not every request."""


@dataclass(frozen=True)
class Login:
    """What a successful login hands the browser: the cookie's secret and the CSRF token."""

    secret: str
    csrf: str
    operator: Operator
    expires_at: datetime


@dataclass(frozen=True)
class Current:
    """The operator behind a request's session, and the token its forms carry."""

    operator: Operator
    csrf: str
    session_id: str


def _id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def login(rt: Runtime, username: str, password: str, remote_addr: str) -> Login:
    """Check the password and open a session; one message for every refusal, so a
    guesser learns nothing about which usernames exist."""
    refused = Unauthorized("wrong username or password", code="bad_login")
    with Session(rt.engine) as s:
        user = s.scalars(select(User).where(User.username == username.strip().lower())).first()
    if user is None or not user.password_hash:
        passwords.burn_time(password)
        raise refused
    if not passwords.verify_password(password, user.password_hash):
        raise refused
    if user.disabled:
        raise Unauthorized(f"user {user.username} is disabled", code="user_disabled")
    now = datetime.now(UTC)
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=rt.settings.console_session_seconds)
    operator = Operator(user.username, Role(user.role), user.site_id, remote_addr)
    with session_scope(rt.engine) as s:
        if passwords.needs_rehash(user.password_hash):
            s.execute(
                update(User)
                .where(User.id == user.id)  # type: ignore[arg-type]
                .values(password_hash=passwords.hash_password(password))
            )
        s.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))  # type: ignore[arg-type]
        s.add(
            ConsoleSession(
                id=_id(secret),
                user_id=user.id,  # type: ignore[arg-type]
                csrf=csrf,
                created_at=now,
                expires_at=expires,
                last_seen_at=now,
                remote_addr=remote_addr[:64],
            )
        )
        audit.record(s, operator, "console.login", user.username)
    return Login(secret, csrf, operator, expires)


def current(rt: Runtime, secret: str, remote_addr: str) -> Current:
    """The live session behind a cookie, or Unauthorized (expired, idle, logged out,
    user disabled)."""
    now = datetime.now(UTC)
    sid = _id(secret)
    with Session(rt.engine) as s:
        row = s.execute(
            select(ConsoleSession, User)
            .join(User, User.id == ConsoleSession.user_id)  # type: ignore[arg-type]
            .where(ConsoleSession.id == sid)
        ).first()
    if row is None:
        raise Unauthorized("you are not logged in, or your session ended", code="no_session")
    session, user = row
    idle = timedelta(seconds=rt.settings.console_idle_seconds)
    expires, seen = aware(session.expires_at), aware(session.last_seen_at)
    assert expires is not None and seen is not None
    if user.disabled:
        raise Unauthorized(f"user {user.username} is disabled", code="user_disabled")
    if expires <= now or seen + idle <= now:
        raise Unauthorized("your session expired; log in again", code="session_expired")
    if now - seen >= TOUCH_EVERY:
        with session_scope(rt.engine) as s:
            s.execute(
                update(ConsoleSession)
                .where(ConsoleSession.id == sid)  # type: ignore[arg-type]
                .values(last_seen_at=now)
            )
    operator = Operator(user.username, Role(user.role), user.site_id, remote_addr)
    return Current(operator, session.csrf, sid)


def logout(rt: Runtime, session_id: str, who: Operator) -> None:
    with session_scope(rt.engine) as s:
        s.execute(delete(ConsoleSession).where(ConsoleSession.id == session_id))  # type: ignore[arg-type]
        audit.record(s, who, "console.logout", who.username)


def end_sessions_of(s: Session, user_id: int) -> int:
    """Log a user out everywhere (disabled, or a new password); in the caller's transaction."""
    result = s.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id))  # type: ignore[arg-type]
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
