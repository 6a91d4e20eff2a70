"""Who may call what: one table with a row per endpoint, checked for every kind of caller.

When you add an endpoint, add its row to ``ROWS``:
``test_table_has_a_row_for_every_route`` fails until you do. A row names the callers
that succeed; everybody else is refused, and how is derived from who they are:

- anonymous, a disabled user, or a credential of the wrong kind (an operator API token
  on a device endpoint, a device access token on an operator endpoint): 401;
- an operator whose role does not allow the call, another device, a decommissioned
  device: 403;
- an installer bound to another site, on a call about one device: 404, as if the device
  did not exist (installers must not learn which devices other sites have).

Every cell runs against fresh objects where the call changes something (a device
awaiting approval to approve, a token to revoke), so cells do not depend on each
other; a refused call must leave that object as it was, an allowed one must change it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.services import claims
from edgefleet.controller.settings import load_settings
from edgefleet.signing import renewal_proof
from edgefleet.wire import ClaimRequest
from tests.support.apiclient import Api, csr_for, new_key

CONSOLE = "/console"
ANON = "anonymous"
SELF = "the device itself"
OTHER_DEVICE = "another device"
DECOMMISSIONED = "a decommissioned device"
ADMIN = "admin"
OPERATOR = "operator"
VIEWER = "viewer"
INSTALLER = "installer of the device's site"
INSTALLER_ELSEWHERE = "installer of another site"
DISABLED = "disabled user"

PRINCIPALS = (
    ANON,
    SELF,
    OTHER_DEVICE,
    DECOMMISSIONED,
    ADMIN,
    OPERATOR,
    VIEWER,
    INSTALLER,
    INSTALLER_ELSEWHERE,
    DISABLED,
)
DEVICES = frozenset({SELF, OTHER_DEVICE, DECOMMISSIONED})

EVERYONE = frozenset(PRINCIPALS)
ONLY_SELF = frozenset({SELF})
READERS = frozenset({ADMIN, OPERATOR, VIEWER})
WRITERS = frozenset({ADMIN, OPERATOR})
ADMINS = frozenset({ADMIN})
APPROVERS = frozenset({ADMIN, OPERATOR, INSTALLER})
INSTALLERS = frozenset({INSTALLER, INSTALLER_ELSEWHERE})
NOBODY: frozenset[str] = frozenset()
"""For a call opened by a credential no principal here holds (a QR claim's own secret)."""


class World:
    """One controller with two sites, operators of every role and three devices."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._n = itertools.count()
        api.site("shop-a")
        api.site("shop-b")
        api.profile("matrix", {"config": {"n": 1}})
        api.profile("matrix", {"config": {"n": 2}})
        self.reg_token = api.token(site="shop-a")["token"]
        self.approval_token = api.token(site="shop-a", require_approval=True)["token"]
        self.device = api.device(self.reg_token)
        self.other_device = api.device(self.reg_token)
        self.decommissioned = api.device(self.reg_token)
        api.ok("POST", f"/devices/{self.decommissioned.id}/decommission", api.admin)
        disabled = api.user("gone", "viewer")
        api.ok("POST", "/users/gone/disable", api.admin)
        self.operator_tokens = {
            ADMIN: api.admin,
            OPERATOR: api.user("op", "operator"),
            VIEWER: api.user("view", "viewer"),
            INSTALLER: api.user("inst-a", "installer", site="shop-a"),
            INSTALLER_ELSEWHERE: api.user("inst-b", "installer", site="shop-b"),
            DISABLED: disabled,
        }
        self.device_of = {
            SELF: self.device,
            OTHER_DEVICE: self.other_device,
            DECOMMISSIONED: self.decommissioned,
        }
        self.follower: str | None = None

    def unique(self, stem: str) -> str:
        return f"{stem}-{next(self._n)}"

    def bearer(self, who: str) -> str | None:
        if who in self.device_of:
            return self.device_of[who].access_token
        return self.operator_tokens.get(who)

    # -- fresh objects for calls that change something ---------------------------------

    def awaiting_device(self) -> dict[str, str]:
        r = self.api.enrol(self.approval_token)
        assert r.status_code == 202, r.text
        return {"device_id": r.json()["device_id"]}

    def enrolled_device(self) -> dict[str, str]:
        r = self.api.enrol(self.reg_token)
        assert r.status_code == 200, r.text
        return {"device_id": r.json()["device_id"]}

    def fresh_token(self) -> dict[str, str]:
        return {"kid": self.api.token(site="shop-a")["kid"]}

    def fresh_user(self) -> dict[str, str]:
        username = self.unique("user")
        self.api.user(username, "viewer")
        return {"username": username}

    def fresh_site(self) -> dict[str, str]:
        name = self.unique("site")
        self.api.site(name)
        return {"name": name}

    def rollout_spec(self) -> dict[str, Any]:
        """A plan needs a device following the profile: enrolled at the first call."""
        if self.follower is None:
            token = self.api.token(site="shop-a", profile="matrix")["token"]
            self.follower = self.api.device(token).id
        return {"profile": "matrix", "seed": "matrix"}

    def rollout_body(self) -> dict[str, Any]:
        """A profile of its own with a follower, so that each call may start a rollout."""
        name = self.unique("wave")
        self.api.profile(name, {"config": {"n": 1}})
        self.api.profile(name, {"config": {"n": 2}})
        token = self.api.token(site="shop-a", profile=name)["token"]
        self.api.device(token)
        return {"profile": name, "bake_seconds": 3600}

    def fresh_rollout(self) -> dict[str, str]:
        r = self.api.ok("POST", "/rollouts", self.api.admin, json=self.rollout_body())
        return {"rollout_id": str(r["id"])}

    def paused_rollout(self) -> dict[str, str]:
        params = self.fresh_rollout()
        self.api.ok("POST", f"/rollouts/{params['rollout_id']}/pause", self.api.admin, json={})
        return params

    def rollout_state(self, params: dict[str, str]) -> str:
        return self.api.ok("GET", f"/rollouts/{params['rollout_id']}", self.api.admin)["state"]

    def held_profile(self) -> dict[str, str]:
        name = self.unique("held")
        self.api.profile(name, {"config": {"n": 1}})
        return {"name": name}

    def released(self, params: dict[str, str]) -> int | None:
        return self.api.ok("GET", f"/profiles/{params['name']}", self.api.admin)[
            "released_revision"
        ]

    def first_commit(self) -> dict[str, str]:
        log = self.api.ok("GET", "/gitops/shop-a/log", self.api.admin)
        return {"commit": log[-1]["commit"]}

    # -- what a call changes, read back by the admin ----------------------------------

    def device_state(self, params: dict[str, str]) -> str:
        return self.api.ok("GET", f"/devices/{params['device_id']}", self.api.admin)["state"]

    def device_profile(self, params: dict[str, str]) -> str | None:
        return self.api.ok("GET", f"/devices/{params['device_id']}", self.api.admin)["profile"]

    def token_revoked(self, params: dict[str, str]) -> bool:
        tokens = self.api.ok("GET", "/tokens", self.api.admin)
        return next(t for t in tokens if t["kid"] == params["kid"])["revoked_at"] is not None

    def restores(self, params: dict[str, str]) -> int:
        audit = self.api.ok("GET", "/audit", self.api.admin)
        return sum(a["action"] == "gitops.restore" for a in audit)

    def site_windows(self, params: dict[str, str]) -> list[str]:
        sites = self.api.ok("GET", "/sites", self.api.admin)
        return next(s for s in sites if s["name"] == params["name"])["maintenance_windows"]

    def user_disabled(self, params: dict[str, str]) -> bool:
        users = self.api.ok("GET", "/users", self.api.admin)
        return next(u for u in users if u["username"] == params["username"])["disabled"]

    def pending_claim(self) -> dict[str, str]:
        """Made through the service: the API's per-address limit on new claims is for
        devices, and every cell here comes from the same address."""
        rt = self.api.client.app.state.rt  # type: ignore[attr-defined]
        made = claims.create(rt, ClaimRequest(csr=csr_for(new_key())), "matrix")
        return {"claim_id": made.id}

    def claim_state(self, params: dict[str, str]) -> str:
        return self.api.ok("GET", f"/claims/{params['claim_id']}", self.api.admin)["state"]

    def user_has_password(self, params: dict[str, str]) -> bool:
        users = self.api.ok("GET", "/users", self.api.admin)
        return next(u for u in users if u["username"] == params["username"])["password"]


def _count(path: str) -> Callable[[World, dict[str, str]], int]:
    return lambda w, _params: len(w.api.ok("GET", path, w.api.admin))


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    """The route template, exactly as the app declares it."""
    allow: frozenset[str]
    ok: int = 200
    site_scoped: bool = False
    """About one device: an installer of another site is told 404."""
    body: Callable[[World], Any] | None = None
    fresh: Callable[[World], dict[str, str]] | None = None
    """Makes the path parameters anew for every cell (calls that change something)."""
    observe: Callable[[World, dict[str, str]], Any] | None = None
    """What the call changes: unchanged after a refusal, changed after success."""

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _staged_registry_key(w: World) -> dict[str, str]:
    """A staged registry key: a refused promote or retire leaves the one before."""
    keys = w.api.ok("GET", "/keys", w.api.admin)
    staged = [k for k in keys if k["kind"] == "registry" and k["state"] == "staged"]
    if not staged:
        staged = [w.api.ok("POST", "/keys/registry/rotate", w.api.admin)]
    return {"kind": "registry", "kid": staged[0]["kid"]}


def _key_state(w: World, params: dict[str, str]) -> str | None:
    keys = w.api.ok("GET", "/keys", w.api.admin)
    return next((k["state"] for k in keys if k["kid"] == params["kid"]), None)


def _enrol_body(w: World) -> dict[str, Any]:
    return {"token": w.reg_token, "csr": csr_for(new_key())}


def _renew_body(w: World) -> dict[str, Any]:
    """Renewal with the same key: the device keeps working for the cells after."""
    csr = csr_for(w.device.key)
    return {
        "csr": csr,
        "proof": renewal_proof(w.device.key, w.device.id, w.api.controller_id, csr, time.time()),
    }


def _assertion_body(w: World) -> dict[str, Any]:
    return {"client_assertion": w.api.assertion(w.device)}


def _update_body(w: World) -> dict[str, Any]:
    """The same attempt every time: the controller keeps one record of it."""
    times = {"started_at": "2030-01-01T00:00:00Z", "finished_at": "2030-01-01T00:00:09Z"}
    return {"outcome": {"revision": 2, "outcome": "rolled_back", "slot": "B", **times}}


def _results_body(w: World) -> dict[str, Any]:
    """The same record every time: stored once, a duplicate after."""
    record = {"seq": 1, "wall": 1.9e9, "mono": 5.0, "payload": '{"y":1}'}
    return {"epoch": "00000000000000aa", "wall": 1.9e9, "mono": 6.0, "records": [record]}


def _update_id(w: World) -> dict[str, str]:
    ack = w.api.ok(
        "POST", f"/devices/{w.device.id}/updates", w.device.access_token, json=_update_body(w)
    )
    return {"update_id": str(ack["id"])}


ROWS: list[Row] = [
    # Public: probes, metrics, the chain devices check against their pins, API docs.
    Row("GET", "/healthz", EVERYONE),
    Row("GET", "/readyz", EVERYONE),
    Row("GET", "/metrics", EVERYONE),
    Row("GET", "/openapi.json", EVERYONE),
    Row("GET", "/docs", EVERYONE),
    Row("GET", "/docs/oauth2-redirect", EVERYONE),
    Row("GET", "/redoc", EVERYONE),
    Row("GET", "/api/v1/pki/chain", EVERYONE),
    # The credential is in the body (a registration token, a signed assertion): any
    # Authorization header, or none, neither helps nor hurts.
    Row(
        "POST",
        "/api/v1/enrol",
        EVERYONE,
        body=_enrol_body,
        observe=_count("/devices"),
    ),
    Row("POST", "/api/v1/auth/token", EVERYONE, body=_assertion_body),
    Row("POST", "/api/v1/devices/{device_id}/renew", EVERYONE, body=_renew_body),
    # The device API: a device reaches only its own resources, with its access token.
    Row("GET", "/api/v1/devices/{device_id}/desired", ONLY_SELF),
    Row(
        "POST",
        "/api/v1/devices/{device_id}/status",
        ONLY_SELF,
        body=lambda w: {"health": {"ok": True}},
    ),
    Row("GET", "/api/v1/devices/{device_id}/registry-token", ONLY_SELF),
    Row("POST", "/api/v1/devices/{device_id}/updates", ONLY_SELF, body=_update_body),
    Row("POST", "/api/v1/devices/{device_id}/results", ONLY_SELF, body=_results_body),
    # The registry's token realm: an operator API token (Basic or Bearer); installers
    # get no registry access at all.
    Row("GET", "/api/v1/registry/token", READERS),
    # Operators.
    Row("GET", "/api/v1/devices", READERS),
    Row("GET", "/api/v1/devices/{device_id}", READERS, site_scoped=True),
    Row(
        "POST",
        "/api/v1/devices/{device_id}/approve",
        APPROVERS,
        site_scoped=True,
        fresh=World.awaiting_device,
        observe=World.device_state,
    ),
    Row(
        "POST",
        "/api/v1/devices/{device_id}/reject",
        APPROVERS,
        site_scoped=True,
        fresh=World.awaiting_device,
        observe=World.device_state,
    ),
    Row(
        "POST",
        "/api/v1/devices/{device_id}/decommission",
        WRITERS,
        site_scoped=True,
        fresh=World.enrolled_device,
        observe=World.device_state,
    ),
    Row(
        "POST",
        "/api/v1/devices/{device_id}/assign",
        WRITERS,
        site_scoped=True,
        body=lambda w: {"profile": "matrix"},
        fresh=World.enrolled_device,
        observe=World.device_profile,
    ),
    Row(
        "POST",
        "/api/v1/devices/{device_id}/retry-update",
        WRITERS,
        site_scoped=True,
        fresh=World.enrolled_device,
        observe=lambda w, p: w.api.ok("GET", f"/devices/{p['device_id']}", w.api.admin)[
            "update_retries"
        ],
    ),
    Row("GET", "/api/v1/devices/{device_id}/history", READERS, site_scoped=True),
    Row(
        "POST",
        "/api/v1/devices/{device_id}/rename",
        WRITERS,
        site_scoped=True,
        body=lambda w: {"name": w.unique("till")},
        fresh=World.enrolled_device,
        observe=lambda w, p: w.api.ok("GET", f"/devices/{p['device_id']}", w.api.admin)["name"],
    ),
    # Replacement retires a device: writers only. An installer replaces by approving a
    # device enrolled with a replacement token an operator made (tests/test_replacement.py).
    Row(
        "POST",
        "/api/v1/devices/{device_id}/replace",
        WRITERS,
        site_scoped=True,
        body=lambda w: {"new": w.enrolled_device()["device_id"], "reason": "matrix"},
        fresh=World.enrolled_device,
        observe=World.device_state,
    ),
    Row(
        "POST",
        "/api/v1/tokens",
        WRITERS,
        ok=201,
        body=lambda w: {"site": "shop-a"},
        observe=_count("/tokens"),
    ),
    Row("GET", "/api/v1/tokens", READERS),
    Row(
        "POST",
        "/api/v1/tokens/{kid}/revoke",
        WRITERS,
        fresh=World.fresh_token,
        observe=World.token_revoked,
    ),
    Row(
        "POST",
        "/api/v1/sites",
        WRITERS,
        ok=201,
        body=lambda w: {"name": w.unique("site")},
        observe=_count("/sites"),
    ),
    Row("GET", "/api/v1/sites", READERS),
    Row(
        "PUT",
        "/api/v1/sites/{name}/maintenance-windows",
        WRITERS,
        body=lambda w: {"windows": ["Sat,Sun 00:00-24:00"]},
        fresh=World.fresh_site,
        observe=World.site_windows,
    ),
    # A dry run changes nothing: readers may plan.
    Row("POST", "/api/v1/rollouts/plan", READERS, body=World.rollout_spec),
    Row(
        "POST",
        "/api/v1/rollouts",
        WRITERS,
        ok=201,
        body=World.rollout_body,
        observe=_count("/rollouts"),
    ),
    Row("GET", "/api/v1/rollouts", READERS),
    Row("GET", "/api/v1/rollouts/engine", READERS),
    Row("GET", "/api/v1/rollouts/{rollout_id}", READERS, fresh=World.fresh_rollout),
    Row("GET", "/api/v1/rollouts/{rollout_id}/devices", READERS, fresh=World.fresh_rollout),
    *(
        Row(
            "POST",
            f"/api/v1/rollouts/{{rollout_id}}/{action}",
            WRITERS,
            body=lambda w: {"reason": "matrix"},
            fresh=World.paused_rollout if action == "resume" else World.fresh_rollout,
            observe=World.rollout_state,
        )
        for action in ("pause", "resume", "abort", "rollback")
    ),
    Row(
        "POST",
        "/api/v1/profiles/{name}/release",
        WRITERS,
        body=lambda w: {"revision": 1},
        fresh=World.held_profile,
        observe=World.released,
    ),
    Row(
        "POST",
        "/api/v1/profiles",
        WRITERS,
        body=lambda w: {"name": w.unique("profile"), "spec": {}},
        observe=_count("/profiles"),
    ),
    Row("GET", "/api/v1/profiles", READERS),
    Row("GET", "/api/v1/profiles/{name}", READERS, fresh=lambda w: {"name": "matrix"}),
    Row("GET", "/api/v1/profiles/{name}/diff", READERS, fresh=lambda w: {"name": "matrix"}),
    Row(
        "POST",
        "/api/v1/users",
        ADMINS,
        ok=201,
        body=lambda w: {"username": w.unique("user"), "role": "viewer"},
        observe=_count("/users"),
    ),
    Row("GET", "/api/v1/users", ADMINS),
    Row(
        "POST",
        "/api/v1/users/{username}/disable",
        ADMINS,
        fresh=World.fresh_user,
        observe=World.user_disabled,
    ),
    # Anyone may set their own password (the service checks the current one); only an
    # admin sets another user's, which is what every cell here tries.
    Row(
        "POST",
        "/api/v1/users/{username}/password",
        ADMINS,
        body=lambda w: {"password": "correct horse battery"},
        fresh=World.fresh_user,
        observe=World.user_has_password,
    ),
    Row("GET", "/api/v1/gitops", READERS),
    Row(
        "GET", "/api/v1/gitops/{repository}/log", READERS, fresh=lambda w: {"repository": "shop-a"}
    ),
    Row(
        "POST",
        "/api/v1/gitops/{repository}/restore",
        WRITERS,
        body=World.first_commit,
        fresh=lambda w: {"repository": "shop-a"},
        observe=World.restores,
    ),
    Row("GET", "/api/v1/audit", ADMINS),
    Row("GET", "/api/v1/updates", READERS),
    Row("GET", "/api/v1/results", READERS),
    Row("GET", "/api/v1/drift", READERS),
    Row("GET", "/api/v1/drift/agreement", READERS),
    Row("GET", "/api/v1/updates/{update_id}", READERS, site_scoped=True, fresh=_update_id),
    Row("GET", "/api/v1/controller", READERS),
    # Signing keys (tests/test_key_rotation.py): admins only; the registry's token bundle
    # is certificates, public so that a registry's start script can fetch it.
    Row("GET", "/api/v1/keys", ADMINS),
    Row(
        "POST",
        "/api/v1/keys/{kind}/rotate",
        ADMINS,
        fresh=lambda w: {"kind": "access"},
        observe=lambda w, p: len(w.api.ok("GET", "/keys", w.api.admin)),
    ),
    Row(
        "POST",
        "/api/v1/keys/{kind}/promote",
        ADMINS,
        fresh=_staged_registry_key,
        observe=_key_state,
    ),
    Row(
        "POST",
        "/api/v1/keys/{kind}/{kid}/retire",
        ADMINS,
        fresh=_staged_registry_key,
        observe=_key_state,
    ),
    Row("GET", "/api/v1/registry/bundle", EVERYONE),
    # QR claims shown by devices. Creating one is anonymous, like enrolment: the CSR is
    # all a device has (rate limited per address; any Authorization header is ignored).
    Row(
        "POST",
        "/api/v1/claims",
        EVERYONE,
        ok=201,
        body=lambda w: {"csr": csr_for(new_key())},
        observe=_count("/claims"),
    ),
    # Polled with the claim's own secret (Authorization: Claim ...), which nobody here
    # holds: every bearer token, an operator's or a device's, is the wrong credential.
    # tests/test_claims.py polls with the secret, and with another claim's.
    Row("GET", "/api/v1/claims/{claim_id}/poll", NOBODY, fresh=World.pending_claim),
    # A pending claim belongs to no site yet: installers of every site see it (they are
    # the ones who scan it), as readers do. An installer sees a decided claim only of
    # their own site: tests/test_claims.py checks that.
    Row("GET", "/api/v1/claims", READERS | INSTALLERS),
    Row("GET", "/api/v1/claims/{claim_id}", READERS | INSTALLERS, fresh=World.pending_claim),
    # Approving names the site (shop-a here): an installer of another site sees the
    # pending claim, so is told 403 (not 404) for approving it into a site not theirs.
    Row(
        "POST",
        "/api/v1/claims/{claim_id}/approve",
        APPROVERS,
        body=lambda w: {"site": "shop-a"},
        fresh=World.pending_claim,
        observe=World.claim_state,
    ),
    # Rejecting names no site: whoever may approve a pending claim somewhere may reject
    # it, the installer of another site included.
    Row(
        "POST",
        "/api/v1/claims/{claim_id}/reject",
        APPROVERS | INSTALLERS,
        body=lambda w: {"reason": "matrix"},
        fresh=World.pending_claim,
        observe=World.claim_state,
    ),
]


def expected_status(row: Row, who: str) -> int:
    if who in row.allow:
        return row.ok
    if who in (ANON, DISABLED) or row.allow == NOBODY:
        return 401
    if row.allow == ONLY_SELF:
        # Another device's (or a decommissioned device's) token is a device credential
        # that may not do this; an operator API token is no device credential at all.
        return 403 if who in DEVICES else 401
    if who in DEVICES:
        return 401  # a device access token is no operator credential
    if who == INSTALLER_ELSEWHERE and row.site_scoped and INSTALLER in row.allow:
        return 404
    return 403


def _path_params(row: Row, world: World, who: str) -> dict[str, str]:
    if row.fresh is not None:
        return row.fresh(world)
    if row.allow == ONLY_SELF and who == DECOMMISSIONED:
        # On its own path: on another's, it would be refused as "another device" anyway.
        return {"device_id": world.decommissioned.id}
    return {"device_id": world.device.id}


def _check_cell(world: World, row: Row, who: str) -> None:
    params = _path_params(row, world, who)
    before = row.observe(world, params) if row.observe else None
    token = world.bearer(who)
    r = world.api.client.request(
        row.method,
        row.path.format(**params),
        headers=world.api.auth(token) if token else {},
        json=row.body(world) if row.body else None,
    )
    want = expected_status(row, who)
    assert r.status_code == want, f"want {want}, got {r.status_code} {r.text[:200]}"
    if want >= 400:
        error = r.json()["error"]
        assert error["code"] and error["message"], r.text
    if row.observe is not None:
        changed_only_if(want < 300, want, before, row.observe(world, params))


def changed_only_if(allowed: bool, status: int, before: Any, after: Any) -> None:
    """An allowed call changed what it is about; a refused one left it as it was."""
    if allowed:
        assert after != before, f"answered {status} but changed nothing ({before})"
    else:
        assert after == before, f"refused, yet changed {before} -> {after}"


def wrong_cells(rows: list[Any], people: tuple[str, ...], check: Callable[..., None]) -> list[str]:
    """Every (row, person) cell whose check failed, each in a line that says why."""
    wrong = []
    for row, who in itertools.product(rows, people):
        try:
            check(row, who)
        except (AssertionError, ValueError, KeyError) as exc:
            wrong.append(f"{row} as {who}: {type(exc).__name__}: {exc}")
    return wrong


def test_every_endpoint_admits_exactly_its_principals(api: Api) -> None:
    world = World(api)
    wrong = wrong_cells(ROWS, PRINCIPALS, lambda row, who: _check_cell(world, row, who))
    assert not wrong, f"{len(wrong)} cells of the matrix are wrong:\n" + "\n".join(wrong)


def served_routes(routes: Any) -> Iterator[tuple[str, str]]:
    for route in routes:
        if hasattr(route, "effective_route_contexts"):  # FastAPI's included routers
            yield from served_routes(route.effective_route_contexts())
            continue
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                yield method, route.path


def test_table_has_a_row_for_every_route(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "controller")
    prepare(settings)
    app = create_app(settings)
    served = {
        (method, path)
        for method, path in served_routes(app.routes)
        if path != "/" and not path.startswith(CONSOLE)  # tests/test_console_authz.py
    }
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented <= served, f"routes the walk missed: {documented - served}"
    table = {(row.method, row.path) for row in ROWS}
    assert len(table) == len(ROWS), "a route has two rows"
    assert served - table == set(), f"routes without a row in ROWS: {sorted(served - table)}"
    assert table - served == set(), f"rows for routes the app does not serve: {table - served}"
    app.state.rt.engine.dispose()
