"""Who may use which console page and form: one row per route, checked for every kind
of person, exactly as the API's table (``tests/test_authz_matrix.py``) is.

The console asks the same roles and services as the API, so the rows mirror the API's.
What differs is how a refusal looks to a person: without a live session (never logged
in, logged out, or a user disabled after logging in) every page and form sends the
browser to the login form (303), and nothing changes; a role that may not do something
gets a 403 page; an installer asking about another site's device gets 404, as in the
API. Every form is posted with its session's CSRF token (tests/test_console.py posts
without one). Add a row when you add a route: ``test_every_console_route_has_a_row``
fails until you do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.settings import load_settings
from tests.support.apiclient import Api
from tests.support.console import PASSWORD, Browser
from tests.test_authz_matrix import (
    ADMIN,
    ADMINS,
    ANON,
    APPROVERS,
    DISABLED,
    INSTALLER,
    INSTALLER_ELSEWHERE,
    INSTALLERS,
    OPERATOR,
    READERS,
    VIEWER,
    WRITERS,
    World,
    changed_only_if,
    served_routes,
    wrong_cells,
)
from tests.test_authz_matrix import _update_id as update_id

PEOPLE = (ANON, ADMIN, OPERATOR, VIEWER, INSTALLER, INSTALLER_ELSEWHERE, DISABLED)
LOGGED_IN = READERS | INSTALLERS
USERNAMES = {
    ADMIN: "admin",
    OPERATOR: "op",
    VIEWER: "view",
    INSTALLER: "inst-a",
    INSTALLER_ELSEWHERE: "inst-b",
}


class Console(World):
    """The API's world, and a browser session for each person in it."""

    def __init__(self, api: Api) -> None:
        super().__init__(api)
        self.browsers: dict[str, Browser] = {ANON: Browser(api)}
        for who, username in USERNAMES.items():
            api.ok("POST", f"/users/{username}/password", api.admin, json={"password": PASSWORD})
            self.browsers[who] = self._logged_in(username)
        api.user("leaving", "operator")
        api.ok("POST", "/users/leaving/password", api.admin, json={"password": PASSWORD})
        self.browsers[DISABLED] = self._logged_in("leaving")
        api.ok("POST", "/users/leaving/disable", api.admin)

    def _logged_in(self, username: str) -> Browser:
        browser = Browser(self.api)
        assert browser.login(username).status_code == 303
        return browser

    def rollout_form(self) -> dict[str, str]:
        body = self.rollout_body()
        return {"profile": body["profile"], "bake_minutes": "60", "reason": "matrix"}


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    allow: frozenset[str]
    ok: int = 200
    ok_for: tuple[tuple[str, int], ...] = ()
    """Where someone allowed is answered otherwise (an installer's home is the claims)."""
    site_scoped: bool = False
    form: Callable[[Console], dict[str, str]] | None = None
    fresh: Callable[[Console], dict[str, str]] | None = None
    observe: Callable[[Console, dict[str, str]], Any] | None = None
    query: str = ""

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _device_state(w: Console, p: dict[str, str]) -> str:
    return w.device_state(p)


ROWS: list[Row] = [
    Row("GET", "/", frozenset(PEOPLE), ok=307),
    Row("GET", "/console/login", frozenset(PEOPLE)),
    Row(
        "GET",
        "/console/",
        LOGGED_IN,
        ok_for=((INSTALLER, 303), (INSTALLER_ELSEWHERE, 303)),
    ),
    Row("GET", "/console/account", LOGGED_IN),
    Row("GET", "/console/devices", READERS),
    Row("GET", "/console/devices/{device_id}", READERS, fresh=World.enrolled_device),
    Row(
        "POST",
        "/console/devices/{device_id}/approve",
        APPROVERS,
        ok=303,
        site_scoped=True,
        fresh=World.awaiting_device,
        observe=_device_state,
    ),
    Row(
        "POST",
        "/console/devices/{device_id}/reject",
        APPROVERS,
        ok=303,
        site_scoped=True,
        fresh=World.awaiting_device,
        observe=_device_state,
    ),
    Row(
        "POST",
        "/console/devices/{device_id}/decommission",
        WRITERS,
        ok=303,
        fresh=World.enrolled_device,
        observe=_device_state,
    ),
    Row(
        "POST",
        "/console/devices/{device_id}/assign",
        WRITERS,
        ok=303,
        form=lambda w: {"profile": "matrix"},
        fresh=World.enrolled_device,
        observe=World.device_profile,
    ),
    Row(
        "POST",
        "/console/devices/{device_id}/retry-update",
        WRITERS,
        ok=303,
        fresh=World.enrolled_device,
        observe=lambda w, p: w.api.ok("GET", f"/devices/{p['device_id']}", w.api.admin)[
            "update_retries"
        ],
    ),
    Row(
        "POST",
        "/console/devices/{device_id}/rename",
        WRITERS,
        ok=303,
        form=lambda w: {"name": w.unique("till")},
        fresh=World.enrolled_device,
        observe=lambda w, p: w.api.ok("GET", f"/devices/{p['device_id']}", w.api.admin)["name"],
    ),
    Row(
        "POST",
        "/console/devices/{device_id}/replace",
        WRITERS,
        ok=303,
        form=lambda w: {"new": w.enrolled_device()["device_id"]},
        fresh=World.enrolled_device,
        observe=_device_state,
    ),
    Row("GET", "/console/updates/{update_id}", READERS, fresh=update_id),
    Row("GET", "/console/tokens", READERS),
    Row(
        "POST",
        "/console/tokens",
        WRITERS,
        form=lambda w: {"site": "shop-a"},
        observe=lambda w, p: len(w.api.ok("GET", "/tokens", w.api.admin)),
    ),
    Row(
        "POST",
        "/console/tokens/{kid}/revoke",
        WRITERS,
        ok=303,
        fresh=World.fresh_token,
        observe=World.token_revoked,
    ),
    # Pending claims belong to no site: every installer sees them (they scan the codes).
    Row("GET", "/console/claims", LOGGED_IN),
    Row("GET", "/console/claims/{claim_id}", LOGGED_IN, fresh=World.pending_claim),
    # The installer of another site may see the claim but not approve it into shop-a.
    Row(
        "POST",
        "/console/claims/{claim_id}/approve",
        APPROVERS,
        ok=303,
        form=lambda w: {"site": "shop-a"},
        fresh=World.pending_claim,
        observe=World.claim_state,
    ),
    Row(
        "POST",
        "/console/claims/{claim_id}/reject",
        APPROVERS | {INSTALLER_ELSEWHERE},
        ok=303,
        fresh=World.pending_claim,
        observe=World.claim_state,
    ),
    Row("GET", "/console/profiles", READERS),
    Row("GET", "/console/profiles/{name}", READERS, fresh=lambda w: {"name": "matrix"}),
    Row("GET", "/console/profiles/{name}/diff", READERS, fresh=lambda w: {"name": "matrix"}),
    Row("GET", "/console/gitops", READERS),
    Row("GET", "/console/rollouts", READERS),
    Row("GET", "/console/drift", READERS),
    Row("GET", "/console/rollouts/plan", READERS, query="?profile=matrix&seed=m"),
    Row(
        "POST",
        "/console/rollouts",
        WRITERS,
        ok=303,
        form=Console.rollout_form,
        observe=lambda w, p: len(w.api.ok("GET", "/rollouts", w.api.admin)),
    ),
    Row("GET", "/console/rollouts/{rollout_id}", READERS, fresh=World.fresh_rollout),
    Row(
        "POST",
        "/console/rollouts/{rollout_id}/{action}",
        WRITERS,
        ok=303,
        fresh=lambda w: {**w.fresh_rollout(), "action": "pause"},
        observe=World.rollout_state,
    ),
    Row("GET", "/console/users", ADMINS),
    Row(
        "POST",
        "/console/users",
        ADMINS,
        form=lambda w: {"username": w.unique("made"), "role": "viewer"},
        observe=lambda w, p: len(w.api.ok("GET", "/users", w.api.admin)),
    ),
    Row(
        "POST",
        "/console/users/{username}/disable",
        ADMINS,
        ok=303,
        fresh=World.fresh_user,
        observe=World.user_disabled,
    ),
    Row(
        "POST",
        "/console/users/{username}/password",
        ADMINS,
        ok=303,
        form=lambda w: {"password": "another good password"},
        fresh=World.fresh_user,
        observe=World.user_has_password,
    ),
    Row("GET", "/console/audit", ADMINS),
]
ELSEWHERE = {
    ("POST", "/console/login"): "tests/test_console.py: logging in, wrong passwords, CSRF",
    ("POST", "/console/logout"): "tests/test_console.py: logging out ends the session",
}


def expected(row: Row, who: str) -> int:
    if who in (ANON, DISABLED) and row.path not in ("/", "/console/login"):
        return 303
    if who in row.allow:
        return dict(row.ok_for).get(who, row.ok)
    if who == INSTALLER_ELSEWHERE and row.site_scoped and INSTALLER in row.allow:
        return 404
    return 403


def _check(world: Console, row: Row, who: str) -> None:
    params = row.fresh(world) if row.fresh else {}
    before = row.observe(world, params) if row.observe else None
    browser = world.browsers[who]
    path = row.path.format(**params) + row.query
    if row.method == "GET":
        r = browser.get(path)
    else:
        r = browser.post(path, row.form(world) if row.form else {})
    want = expected(row, who)
    assert r.status_code == want, f"want {want}, got {r.status_code}: {r.text[:300]}"
    if want == 303 and who in (ANON, DISABLED):
        assert r.headers["location"].startswith("/console/login?next="), r.headers["location"]
    if want in (403, 404):
        assert 'class="flash bad"' in r.text, r.text[:300]
    if row.observe is not None:
        allowed = want < 300 or (want == 303 and who in row.allow)
        changed_only_if(allowed, want, before, row.observe(world, params))


def test_every_console_route_admits_exactly_its_people(api: Api) -> None:
    world = Console(api)
    wrong = wrong_cells(ROWS, PEOPLE, lambda row, who: _check(world, row, who))
    assert not wrong, f"{len(wrong)} cells are wrong:\n" + "\n".join(wrong)


def test_every_console_route_has_a_row(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "controller")
    prepare(settings)
    app = create_app(settings)
    served = {
        (method, path)
        for method, path in served_routes(app.routes)
        if path == "/" or path.startswith("/console")
    }
    table = {(row.method, row.path) for row in ROWS}
    assert len(table) == len(ROWS), "a route has two rows"
    assert served - table - set(ELSEWHERE) == set(), "routes without a row"
    assert table - served == set(), f"rows for routes the app does not serve: {table - served}"
    app.state.rt.engine.dispose()
