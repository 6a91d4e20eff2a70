"""Sites: where devices live (name, time zone, labels) and when rollouts may update
them (maintenance windows, checked here so that a stored window always parses)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.models import Site
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.rollouts import windows as win
from edgefleet.controller.services import audit
from edgefleet.errors import BadRequest, Conflict, NotFound

MAX_WINDOWS = 32


def public(site: Site) -> dict[str, Any]:
    return {
        "name": site.name,
        "timezone": site.timezone,
        "labels": site.labels,
        "maintenance_windows": list(site.maintenance_windows or []),
    }


def check_windows(timezone: str, windows: list[str]) -> list[str]:
    """The windows as they will be stored (trimmed), or BadRequest naming the bad one:
    refused before anything is written, so a rollout never meets a window it cannot read."""
    if len(windows) > MAX_WINDOWS:
        raise BadRequest(
            f"a site has at most {MAX_WINDOWS} maintenance windows, not {len(windows)}",
            code="bad_window",
        )
    cleaned = [" ".join(w.split()) for w in windows]
    for text in cleaned:
        win.parse_window(text)
    if cleaned:
        win.zone(timezone)
    return cleaned


def create_site(
    engine: Any,
    who: Operator,
    name: str,
    timezone: str = "UTC",
    labels: dict[str, str] | None = None,
    maintenance_windows: list[str] | None = None,
) -> dict[str, Any]:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadRequest(
            f"unknown time zone {timezone!r}; use an IANA name such as Europe/Berlin",
            code="bad_timezone",
        ) from exc
    windows = check_windows(timezone, maintenance_windows or [])
    try:
        with session_scope(engine) as s:
            site = Site(
                name=name, timezone=timezone, labels=labels or {}, maintenance_windows=windows
            )
            s.add(site)
            s.flush()
            audit.record(
                s, who, "site.create", name, timezone=timezone, maintenance_windows=windows
            )
            return public(site)
    except IntegrityError as exc:
        raise Conflict(f"site {name!r} exists already", code="exists") from exc


def set_windows(engine: Any, who: Operator, name: str, windows: list[str]) -> dict[str, Any]:
    """Replace a site's maintenance windows; an empty list lets rollouts update the site at
    any time. Audited with the windows before and after, so a change can be undone."""
    with session_scope(engine) as s:
        site = site_by_name(s, name)
        cleaned = check_windows(site.timezone, windows)
        before = list(site.maintenance_windows or [])
        site.maintenance_windows = cleaned
        s.add(site)
        audit.record(s, who, "site.windows", name, before=before, after=cleaned)
        s.flush()
        return public(site)


def list_sites(engine: Any, who: Operator | None = None) -> list[dict[str, Any]]:
    """Every site, or for an installer only their own (the one they may approve into)."""
    q = select(Site).order_by(Site.name)
    if who is not None and who.role == Role.installer:
        q = q.where(Site.id == who.site_id)
    with Session(engine) as s:
        return [public(x) for x in s.scalars(q)]


def site_by_name(s: Session, name: str) -> Site:
    site = s.scalars(select(Site).where(Site.name == name)).first()
    if site is None:
        raise NotFound(f"no site {name!r}; create it with `edgefleet sites create`", code="no_site")
    return site
