"""Who may do what in the registry: operators by role, devices by their desired state.

What a caller asks for and may not have is dropped from the grant, not refused: that
is how registry token servers answer, and the registry then refuses the request that
needed it. Grants that let an operator write are audited.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from edgefleet.controller import roles
from edgefleet.controller.db import session_scope
from edgefleet.controller.registry_tokens import REPOSITORY, Access, repository_of
from edgefleet.controller.roles import Operator, Role
from edgefleet.controller.services import audit
from edgefleet.wire import DesiredState

PULL = "pull"
ACTION_ROLES: dict[str, frozenset[Role]] = {
    PULL: roles.READ,
    "push": roles.WRITE,
    "delete": roles.ADMIN,
}
"""Repository actions by the roles that get them; any other action is never granted."""

CATALOG = ("registry", "catalog")
"""Listing the registry's repositories is reading: anyone who may pull may list."""


def for_operator(engine: Engine, who: Operator, wanted: list[Access]) -> list[Access]:
    """What of ``wanted`` the operator's role allows, on any repository."""
    granted = []
    for access in wanted:
        if access.type == REPOSITORY:
            actions = {a for a in access.actions if who.role in ACTION_ROLES.get(a, ())}
        elif (access.type, access.name) == CATALOG and who.role in roles.READ:
            actions = set(access.actions & {"*"})
        else:
            actions = set()
        if actions:
            granted.append(Access(access.type, access.name, frozenset(actions)))
    writes = [a for a in granted if a.type == REPOSITORY and a.actions - {PULL}]
    if writes:
        with session_scope(engine) as s:
            for access in writes:
                audit.record(s, who, "registry.write", access.name, actions=sorted(access.actions))
    return granted


def for_device(desired: DesiredState, wanted: list[Access] | None) -> list[Access]:
    """Pull, and only pull, on the repositories of the device's desired models (and of
    the candidates it runs in shadow); ``wanted``
    None means all of them. A device without models gets a token that grants nothing."""
    candidates = [c.model for c in desired.shadow.models] if desired.shadow else []
    mine = sorted({repository_of(m.reference) for m in [*desired.models, *candidates]})
    if wanted is not None:
        asked = {a.name for a in wanted if a.type == REPOSITORY and PULL in a.actions}
        mine = [name for name in mine if name in asked]
    return [Access(REPOSITORY, name, frozenset({PULL})) for name in mine]
