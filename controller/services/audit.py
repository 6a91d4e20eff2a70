"""Audit records: who did what, when and from where, written in the action's transaction."""

from __future__ import annotations

from typing import Any

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
