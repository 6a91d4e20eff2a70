"""The console's own rules, through the real app: logging in and out, sessions that end
at once, CSRF tokens on every form, what it sends a browser, and forms that refuse bad
input without changing anything. Who may do what is tests/test_console_authz.py; the
console in a real browser is tests/test_console_browser.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from edgefleet.controller.models import ConsoleSession
from edgefleet.controller.settings import Settings
from tests.support.apiclient import Api
from tests.support.console import PASSWORD, Browser, user_with_password

COOKIE = "__Host-ef_session"
DASH = "\N{EN DASH}"  # "1-50 of 53" as the page writes it


def _logged_in(api: Api, username: str = "olga", role: str = "operator") -> Browser:
    user_with_password(api, username, role)
    browser = Browser(api)
    assert browser.login(username).status_code == 303
    return browser


def test_logging_in_sets_a_secure_session_cookie_and_lands_where_asked(api: Api) -> None:
    user_with_password(api, "olga", "operator")
    browser = Browser(api)
    first = browser.get("/console/devices?state=ready")
    assert first.status_code == 303
    assert first.headers["location"] == "/console/login?next=/console/devices%3Fstate%3Dready"
    form = browser.get("/console/login?next=/console/devices")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    r = browser.client.post(
        "/console/login",
        data={
            "username": "olga",
            "password": PASSWORD,
            "csrf": token,
            "next": "/console/devices",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/devices"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/" in cookie and "Domain" not in cookie
    page = browser.get("/console/devices")
    assert page.status_code == 200
    assert "olga" in page.text


def test_a_login_never_sends_the_browser_to_another_site(api: Api) -> None:
    user_with_password(api, "olga", "operator")
    for target in ("https://evil.example/", "//evil.example/console/", "/api/v1/devices"):
        browser = Browser(api)
        form = browser.get("/console/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        r = browser.client.post(
            "/console/login",
            data={"username": "olga", "password": PASSWORD, "csrf": token, "next": target},
        )
        assert r.headers["location"] == "/console/", target


def test_wrong_passwords_and_unknown_users_are_told_the_same_thing(api: Api) -> None:
    user_with_password(api, "olga", "operator")
    for username, password in (("olga", "not her password"), ("nobody", PASSWORD)):
        r = Browser(api).login(username, password)
        assert r.status_code == 401
        assert "wrong username or password" in r.text
        assert COOKIE not in r.headers.get("set-cookie", "")


def test_the_login_form_without_its_token_logs_nobody_in(api: Api) -> None:
    user_with_password(api, "olga", "operator")
    browser = Browser(api)
    r = browser.client.post("/console/login", data={"username": "olga", "password": PASSWORD})
    assert r.status_code == 403
    assert "security token" in r.text
    assert COOKIE not in r.headers.get("set-cookie", "")
    assert browser.get("/console/devices").status_code == 303


def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(api: Api) -> None:
    api.site("shop-1")
    device = api.device(api.token(site="shop-1")["token"])
    olga = _logged_in(api)
    mallory = _logged_in(api, "mallory", "operator")
    for data, csrf in (({}, False), ({"csrf": mallory.csrf}, False), ({"csrf": "x"}, False)):
        r = olga.post(f"/console/devices/{device.id}/decommission", data, csrf=csrf)
        assert r.status_code == 403, r.text
        assert "security token" in r.text
    assert api.ok("GET", f"/devices/{device.id}", api.admin)["state"] != "decommissioned"
    done = olga.post(f"/console/devices/{device.id}/decommission")
    assert done.status_code == 303
    assert api.ok("GET", f"/devices/{device.id}", api.admin)["state"] == "decommissioned"


def test_a_disabled_users_session_and_api_tokens_stop_working_at_once(api: Api) -> None:
    token = user_with_password(api, "olga", "operator")
    browser = Browser(api)
    assert browser.login("olga").status_code == 303
    assert browser.get("/console/devices").status_code == 200
    assert api.call("GET", "/devices", token).status_code == 200
    api.ok("POST", "/users/olga/disable", api.admin)
    page = browser.get("/console/devices")
    assert page.status_code == 303 and page.headers["location"].startswith("/console/login")
    assert api.call("GET", "/devices", token).status_code == 401
    again = Browser(api).login("olga")
    assert again.status_code == 401 and "disabled" in again.text


def test_a_new_password_ends_every_session_of_that_user(api: Api) -> None:
    phone, laptop = Browser(api), Browser(api)
    user_with_password(api, "olga", "operator")
    assert phone.login("olga").status_code == 303
    assert laptop.login("olga").status_code == 303
    r = laptop.post("/console/users/olga/password", {"current": PASSWORD, "password": "a new one!"})
    assert r.status_code == 303, r.text
    assert phone.get("/console/devices").status_code == 303
    assert laptop.get("/console/devices").status_code == 303
    assert Browser(api).login("olga", PASSWORD).status_code == 401
    assert Browser(api).login("olga", "a new one!").status_code == 303


def test_changing_your_own_password_needs_the_current_one(api: Api) -> None:
    olga = _logged_in(api)
    r = olga.post("/console/users/olga/password", {"current": "guess", "password": "a new one!"})
    assert r.status_code == 401 and "current password is wrong" in r.text
    short = olga.post("/console/users/olga/password", {"current": PASSWORD, "password": "short"})
    assert short.status_code == 400 and "at least 10 characters" in short.text
    assert olga.get("/console/devices").status_code == 200  # nothing changed


def test_logging_out_ends_the_session_for_whoever_kept_the_cookie(api: Api) -> None:
    olga = _logged_in(api)
    kept = olga.client.cookies.get(COOKIE)
    assert olga.post("/console/logout").status_code == 303
    thief = Browser(api)
    thief.client.cookies.set(COOKIE, kept, domain="testserver.local")
    assert thief.get("/console/devices").status_code == 303


def test_an_idle_or_old_session_ends(api: Api, settings: Settings) -> None:
    olga = _logged_in(api)
    engine = api.client.app.state.rt.engine  # type: ignore[attr-defined]
    idle = timedelta(seconds=settings.console_idle_seconds + 60)
    with engine.begin() as conn:
        conn.execute(update(ConsoleSession).values(last_seen_at=datetime.now(UTC) - idle))
    assert olga.get("/console/devices").status_code == 303
    bob = _logged_in(api, "bob", "viewer")
    with engine.begin() as conn:
        conn.execute(update(ConsoleSession).values(expires_at=datetime.now(UTC)))
    assert bob.get("/console/devices").status_code == 303


def test_logins_from_one_address_are_rate_limited(api: Api, settings: Settings) -> None:
    user_with_password(api, "olga", "operator")
    answers = [Browser(api).login("olga", "wrong guess").status_code for _ in range(30)]
    assert answers[: settings.login_burst] == [401] * settings.login_burst
    assert 429 in answers
    limited = Browser(api).login("olga")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1


def test_pages_load_nothing_from_elsewhere_and_cannot_be_framed(api: Api) -> None:
    olga = _logged_in(api, role="admin")
    for path in ("/console/", "/console/devices", "/console/tokens", "/console/users"):
        r = olga.get(path)
        assert r.status_code == 200, path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert not re.search(r'(src|href)="(https?:)?//', r.text), path
        assert 'name="viewport"' in r.text
    css = olga.get("/console/static/console.css")
    assert css.status_code == 200 and "@media (max-width" in css.text


def test_a_bad_token_form_is_refused_in_words_and_makes_no_token(api: Api) -> None:
    api.site("shop-1")
    olga = _logged_in(api)
    before = len(api.ok("GET", "/tokens", api.admin))
    for form, says in (
        ({"site": "shop-1", "labels": "no-equals-sign"}, "must read key=value"),
        ({"site": "nowhere"}, "no site"),
        ({"site": "shop-1", "max_uses": "many"}, "whole number"),
        ({"site": "shop-1", "expires": "forever"}, "unknown expiry"),
    ):
        r = olga.post("/console/tokens", form)
        assert r.status_code in (400, 404), (form, r.status_code)
        assert says in r.text, (form, r.text[:500])
    assert len(api.ok("GET", "/tokens", api.admin)) == before


def test_a_token_made_in_the_console_is_shown_once_with_its_label(api: Api) -> None:
    api.site("shop-1")
    olga = _logged_in(api)
    r = olga.post("/console/tokens", {"site": "shop-1", "qr": "on", "labels": "zone=till"})
    assert r.status_code == 200
    secret = re.search(r'id="token">(efr\.[^<]+)<', r.text).group(1)  # type: ignore[union-attr]
    assert 'src="data:image/png;base64,' in r.text
    assert r.headers["cache-control"] == "no-store"
    listed = olga.get("/console/tokens")
    assert secret not in listed.text
    made = api.ok("GET", "/tokens", api.admin)[-1]
    assert made["labels"] == {"zone": "till"} and made["require_approval"] is True


def test_an_installer_lands_on_the_claims_and_may_approve_only_into_their_site(
    api: Api,
) -> None:
    api.site("shop-a")
    api.site("shop-b")
    user_with_password(api, "ines", "installer", site="shop-a")
    ines = Browser(api)
    assert ines.login("ines").status_code == 303
    home = ines.get("/console/")
    assert home.status_code == 303 and home.headers["location"] == "/console/claims"
    from edgefleet.controller.services import claims
    from edgefleet.wire import ClaimRequest
    from tests.support.apiclient import csr_for, new_key

    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    claim = claims.create(rt, ClaimRequest(csr=csr_for(new_key())), "192.0.2.7")
    page = ines.get(f"/console/claims/{claim.id}")
    assert page.status_code == 200 and claim.code in page.text
    offered = re.findall(r"<option>([^<]+)</option>", page.text.split('name="site"')[1][:300])
    assert offered == ["shop-a"]
    refused = ines.post(f"/console/claims/{claim.id}/approve", {"site": "shop-b"})
    assert refused.status_code == 403
    assert api.ok("GET", f"/claims/{claim.id}", api.admin)["state"] == "pending"
    done = ines.post(f"/console/claims/{claim.id}/approve", {"site": "shop-a", "name": "till-3"})
    assert done.status_code == 303, done.text
    approved = api.ok("GET", f"/claims/{claim.id}", api.admin)
    assert approved["state"] == "approved" and approved["name"] == "till-3"


def test_one_click_hands_a_device_s_place_to_its_replacement(api: Api) -> None:
    api.site("shop-1")
    api.profile("vision", {"config": {"n": 1}})
    token = api.token(site="shop-1", profile="vision", labels={"zone": "till"})["token"]
    old = api.device(token)
    olga = _logged_in(api)
    assert olga.post(f"/console/devices/{old.id}/rename", {"name": "till-3"}).status_code == 303
    assert "Replace this device" not in olga.get(f"/console/devices/{old.id}").text
    new = api.device(api.token(site="shop-1")["token"])
    page = olga.get(f"/console/devices/{old.id}")
    assert f'<option value="{new.id}">' in page.text
    r = olga.post(f"/console/devices/{old.id}/replace", {"new": new.id, "reason": "broken fan"})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/console/devices/{new.id}")
    took = api.ok("GET", f"/devices/{new.id}", api.admin)
    assert (took["name"], took["labels"], took["profile"]) == ("till-3", {"zone": "till"}, "vision")
    assert api.ok("GET", f"/devices/{old.id}", api.admin)["state"] == "decommissioned"
    shown = olga.get(f"/console/devices/{new.id}").text
    assert "This place's devices" in shown and old.id in shown
    again = olga.post(f"/console/devices/{old.id}/replace", {"new": new.id})
    assert again.status_code == 409 and 'class="flash bad"' in again.text


def test_a_rolled_back_update_shows_its_evidence(api: Api) -> None:
    api.site("shop-1")
    device = api.device(api.token(site="shop-1")["token"])
    times = {"started_at": "2030-01-01T00:00:00Z", "finished_at": "2030-01-01T00:00:09Z"}
    outcome = {"revision": 4, "outcome": "rolled_back", "slot": "B", "reason": "probe", **times}
    evidence = {
        "failed_checks": [{"name": "probe", "detail": "output y differs", "output": ""}],
        "probe": [{"model": "det", "output": "y", "expected": [1.0, 2.0], "actual": [1.0, 9.5]}],
        "latency": [{"model": "det", "samples_ms": [3.0, 4.5, 40.0], "budget_ms": 20.0}],
        "log": ["<b>switching to slot B</b>"],
    }
    ack = api.ok(
        "POST",
        f"/devices/{device.id}/updates",
        device.access_token,
        json={"outcome": outcome, "evidence": evidence},
    )
    olga = _logged_in(api, role="viewer")
    history = olga.get(f"/console/devices/{device.id}").text
    assert f'/console/updates/{ack["id"]}">evidence</a>' in history
    page = olga.get(f"/console/updates/{ack['id']}")
    assert page.status_code == 200
    for shown in ("output y differs", "9.5", "budget 20.0 ms", "&lt;b&gt;switching to slot B"):
        assert shown in page.text, shown
    assert "<svg" in page.text  # the latency samples as a sparkline
    assert olga.get("/console/updates/999999").status_code == 404


def test_a_weak_password_for_a_new_user_makes_no_user(api: Api) -> None:
    olga = _logged_in(api, role="admin")
    r = olga.post("/console/users", {"username": "newbie", "role": "viewer", "password": "short"})
    assert r.status_code == 400 and "at least 10 characters" in r.text
    assert "newbie" not in [u["username"] for u in api.ok("GET", "/users", api.admin)]
    made = olga.post(
        "/console/users", {"username": "newbie", "role": "viewer", "password": "long enough now"}
    )
    assert made.status_code == 200 and 'id="api-token">efo.' in made.text
    assert Browser(api).login("newbie", "long enough now").status_code == 303


def test_a_device_page_says_what_its_buffer_holds(api: Api) -> None:
    api.site("shop-1")
    device = api.device(api.token(site="shop-1")["token"])
    buffer = {"depth": 1200, "bytes": 3 * 1024 * 1024, "cap_bytes": 64 * 1024 * 1024}
    report = {"buffer": {**buffer, "oldest_age_seconds": 90.0, "drops": {"drop_oldest": 7}}}
    api.ok("POST", f"/devices/{device.id}/status", device.access_token, json=report)
    page = _logged_in(api, role="viewer").get(f"/console/devices/{device.id}").text
    assert "1200 (3.0 MiB of 64.0 MiB)" in page
    assert "drop_oldest: 7" in page


def test_the_device_list_pages_filters_and_searches(api: Api) -> None:
    api.site("shop-1")
    api.site("shop-2")
    token = api.token(site="shop-1")["token"]
    made = [api.device(token, serial=f"SN-{i:03d}") for i in range(53)]
    other = api.device(api.token(site="shop-2")["token"], serial="SN-OTHER")
    olga = _logged_in(api, role="viewer")
    first = olga.get("/console/devices?site=shop-1").text
    assert f"1{DASH}50 of 53" in first and "offset=50" in first and other.id not in first
    rest = olga.get("/console/devices?site=shop-1&offset=50").text
    assert f"51{DASH}53 of 53" in rest and "Next" not in rest
    shown = {d.id for d in made if d.id in first} | {d.id for d in made if d.id in rest}
    assert shown == {d.id for d in made}
    found = olga.get("/console/devices?q=SN-OTHER").text
    assert other.id in found and f"1{DASH}1 of 1" in found
    live = olga.get("/console/devices?q=SN-OTHER", headers={"X-Live": "1"}).text
    assert other.id in live and "<html" not in live
    bad = olga.get("/console/devices?offset=lots")
    assert bad.status_code == 400 and "not a number" in bad.text


def test_a_replacement_token_made_in_the_console_takes_the_old_devices_site(api: Api) -> None:
    api.site("shop-1")
    api.site("shop-2")
    old = api.device(api.token(site="shop-2")["token"])
    olga = _logged_in(api)
    r = olga.post("/console/tokens", {"site": "shop-1", "replaces": old.id})
    assert r.status_code == 200, r.text[:500]
    made = api.ok("GET", "/tokens", api.admin)[-1]
    assert (made["site"], made["replaces"], made["max_uses"]) == ("shop-2", old.id, 1)
