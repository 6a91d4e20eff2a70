"""Audit records: who did what, when and from where, written in the action's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from edgefleet.controller.models import AuditRecord
from edgefleet.controller.roles import Operator


def record(s: Session, who: Operator, action: str, target: str = "", **detail: Any) -> None:
    s.add(
        AuditRecord(
            actor=who.username,
            action=action,
            target=target,
            detail=detail,
            remote_addr=who.remote_addr,
        )
    )


def recent(engine: Any, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` records, newest first."""
    with Session(engine) as s:
        rows = s.scalars(select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit))  # type: ignore[union-attr]
        return [
            {
                "at": r.at.isoformat(),
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "detail": r.detail,
                "remote_addr": r.remote_addr,
            }
            for r in rows
        ]
