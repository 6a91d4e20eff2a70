"""The console's rows for the callers ``tests/test_console_authz.py`` leaves out: a
device (its own, another's and a decommissioned device's access token) and an operator
API token sent as ``Authorization: Bearer`` without a console session. The console
knows people only by their session cookie, so each of them is an anonymous visitor:
every page and form sends them to the login form (303) and nothing changes. A device
token that opened the console would let a stolen device act as an operator.
"""

from __future__ import annotations

from tests.support.apiclient import Api
from tests.support.console import Browser
from tests.test_authz_matrix import (
    ADMIN,
    DECOMMISSIONED,
    OTHER_DEVICE,
    SELF,
    World,
    changed_only_if,
    wrong_cells,
)
from tests.test_console_authz import ROWS, Row

BEARERS = (SELF, OTHER_DEVICE, DECOMMISSIONED, ADMIN)
PUBLIC = {"/": 307, "/console/login": 200}


def test_bearer_tokens_open_no_console_page_or_form(api: Api) -> None:
    world = World(api)
    browser = Browser(api)

    def check(row: Row, who: str) -> None:
        params = row.fresh(world) if row.fresh else {}  # type: ignore[arg-type]
        before = row.observe(world, params) if row.observe else None  # type: ignore[arg-type]
        headers = {"authorization": f"Bearer {world.bearer(who)}"}
        path = row.path.format(**params) + row.query
        if row.method == "GET":
            r = browser.client.get(path, headers=headers)
        else:
            form = row.form(world) if row.form else {}  # type: ignore[arg-type]
            r = browser.client.post(path, data=form, headers=headers)
        want = PUBLIC.get(row.path, 303)
        assert r.status_code == want, f"want {want}, got {r.status_code}: {r.text[:200]}"
        if want == 303:
            assert r.headers["location"].startswith("/console/login?next="), r.headers
        if row.observe is not None:
            changed_only_if(False, want, before, row.observe(world, params))  # type: ignore[arg-type]

    wrong = wrong_cells(ROWS, BEARERS, check)
    assert not wrong, f"{len(wrong)} cells are wrong:\n" + "\n".join(wrong)
