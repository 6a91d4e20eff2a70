"""Sites: where devices live (name, time zone, labels)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from edgefleet.controller.db import session_scope
from edgefleet.controller.models import Site
from edgefleet.controller.roles import Operator
from edgefleet.controller.services import audit
from edgefleet.errors import BadRequest, Conflict, NotFound


def public(site: Site) -> dict[str, Any]:
    return {"name": site.name, "timezone": site.timezone, "labels": site.labels}


def create_site(
    engine: Any,
    who: Operator,
    name: str,
    timezone: str = "UTC",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadRequest(
            f"unknown time zone {timezone!r}; use an IANA name such as Europe/Berlin",
            code="bad_timezone",
        ) from exc
    try:
        with session_scope(engine) as s:
            site = Site(name=name, timezone=timezone, labels=labels or {})
            s.add(site)
            s.flush()
            audit.record(s, who, "site.create", name, timezone=timezone)
            return public(site)
    except IntegrityError as exc:
        raise Conflict(f"site {name!r} exists already", code="exists") from exc


def list_sites(engine: Any) -> list[dict[str, Any]]:
    with Session(engine) as s:
        return [public(x) for x in s.scalars(select(Site).order_by(Site.name))]


def site_by_name(s: Session, name: str) -> Site:
    site = s.scalars(select(Site).where(Site.name == name)).first()
    if site is None:
        raise NotFound(f"no site {name!r}; create it with `edgefleet sites create`", code="no_site")
    return site
