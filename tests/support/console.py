"""A person at the console, in process: their own cookie jar over the real app, logged
in through the real login form. Browser tests (Playwright) live elsewhere; these read
the HTML the server sends."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.support.apiclient import Api

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
PASSWORD = "correct horse battery"


def user_with_password(api: Api, username: str, role: str, site: str | None = None) -> str:
    """An operator of ``role`` who can log in to the console; returns their API token."""
    token = api.user(username, role, site)
    api.ok("POST", f"/users/{username}/password", api.admin, json={"password": PASSWORD})
    return token


class Browser:
    """One person's session: cookies kept, redirects not followed (tests look at them)."""

    __test__ = False

    def __init__(self, api: Api) -> None:
        app = api.client.app
        self.client = TestClient(app, base_url="https://testserver", follow_redirects=False)  # type: ignore[arg-type]
        self.csrf = ""

    def login(self, username: str, password: str = PASSWORD) -> Any:
        form = self.client.get("/console/login")
        token = CSRF.search(form.text)
        assert token, form.text
        r = self.client.post(
            "/console/login",
            data={"username": username, "password": password, "csrf": token.group(1)},
        )
        if r.status_code == 303:
            self.csrf = self.form_token("/console/devices") or self.form_token("/console/claims")
        return r

    def form_token(self, path: str) -> str:
        found = CSRF.search(self.client.get(path).text)
        return found.group(1) if found else ""

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, **kw)

    def post(self, path: str, data: dict[str, Any] | None = None, csrf: bool = True) -> Any:
        body = dict(data or {})
        if csrf:
            body["csrf"] = self.csrf
        return self.client.post(path, data=body)
