"""Operator roles and what each may do; the API and (later) the console both ask here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    admin = "admin"
    operator = "operator"
    viewer = "viewer"
    installer = "installer"
    """Approves or rejects devices waiting at their own site, and nothing else."""


READ = frozenset({Role.admin, Role.operator, Role.viewer})
WRITE = frozenset({Role.admin, Role.operator})
ADMIN = frozenset({Role.admin})
APPROVE = frozenset({Role.admin, Role.operator, Role.installer})


@dataclass(frozen=True)
class Operator:
    username: str
    role: Role
    site_id: int | None = None
    remote_addr: str = ""

    def may_act_at(self, site_id: int) -> bool:
        """Installers are bound to one site; other roles see the whole fleet."""
        return self.role != Role.installer or self.site_id == site_id
