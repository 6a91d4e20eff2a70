"""The console in a real browser: Debian's Chromium driven by Playwright against a real
controller process over HTTPS, with real agents. Each test also leaves screenshots of
the pages it visits, at phone and desktop widths (``tests/support/browser.py``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.apiclient import csr_for, new_key
from tests.support.browser import (
    DESKTOP,
    PHONE,
    decode_qr_image,
    log_in,
    person,
    screenshot,
)
from tests.support.processes import AgentProcess, ControllerProcess, wait_for
from tests.test_claims_e2e import claim_registration, zbar

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """SQLite; one controller for the module's tests, each with sites of its own."""
    root = tmp_path_factory.mktemp("console")
    ctl = ControllerProcess(root / "ctl", device_interval_seconds=1).start()
    assert ctl.admin_password, "the controller printed no first admin password"
    try:
        yield ctl
    finally:
        ctl.close()


def _api(ctl: ControllerProcess) -> httpx.Client:
    return ctl.client()


def _user(ctl: ControllerProcess, username: str, role: str, site: str | None = None) -> str:
    """A user who can log in; returns their API token."""
    with _api(ctl) as c:
        made = c.post("/users", json={"username": username, "role": role, "site": site})
        made.raise_for_status()
        c.post(f"/users/{username}/password", json={"password": PASSWORD}).raise_for_status()
    return str(made.json()["api_token"])


def _enrol(ctl: ControllerProcess, token: str) -> str:
    """A device enrolled through the device API (no agent needed where none is watched)."""
    with httpx.Client(base_url=ctl.url + "/api/v1", verify=ctl.ca) as c:
        r = c.post("/enrol", json={"token": token, "csr": csr_for(new_key())})
        r.raise_for_status()
        return str(r.json()["device_id"])


def _both_widths(page: Any, name: str) -> None:
    page.set_viewport_size(PHONE)
    screenshot(page, f"{name}-phone")
    page.set_viewport_size(DESKTOP)
    screenshot(page, f"{name}-desktop")


def test_a_token_made_in_the_console_enrols_an_agent_that_appears_without_a_reload(
    controller: ControllerProcess, chromium: Any, tmp_path: Path
) -> None:
    ctl = controller
    with _api(ctl) as c:
        c.post("/sites", json={"name": "shop-web"}).raise_for_status()
    page = person(chromium)
    log_in(page, ctl.url, "admin", ctl.admin_password)
    _both_widths(page, "overview")

    page.goto(ctl.url + "/console/tokens")
    page.click("summary")
    page.select_option("select[name=site]", "shop-web")
    page.fill("input[name=labels]", "zone=checkout")
    page.check("input[name=qr]")
    page.click("form[action$='/console/tokens'] button[type=submit]")
    page.wait_for_selector("#qr-label")
    _both_widths(page, "token-created")
    payload = decode_qr_image(page, "#qr-label")
    assert payload.startswith(f"HTTPS://127.0.0.1:{ctl.port}/E/"), payload
    secret = page.inner_text("#token")
    assert secret.startswith("efr.")
    page.goto(ctl.url + "/console/tokens")  # shown once: no page shows it again
    assert secret not in page.content() and payload not in page.content()

    page.goto(ctl.url + "/console/devices?site=shop-web")
    assert page.locator("tr[data-device]").count() == 0
    agent = AgentProcess(None, tmp_path / "agent", "SN-WEB-1", qr_payload=payload)
    try:
        row = page.wait_for_selector("tr[data-device]", timeout=30_000)  # no reload
        assert "awaiting_approval" in row.inner_text()
        _both_widths(page, "devices")
        row.query_selector("a").click()
        page.wait_for_selector("text=Approve")
        page.click("button:has-text('Approve')")
        page.wait_for_selector(".flash.ok")
        wait_for(lambda: agent.state().get("phase") == "ready", 60, "the agent ready")
        page.reload()
        assert "zone=checkout" in page.inner_text("main")
        _both_widths(page, "device")
    finally:
        agent.stop()


def test_an_operator_pauses_and_resumes_a_rollout_and_it_is_recorded(
    controller: ControllerProcess, chromium: Any
) -> None:
    ctl = controller
    with _api(ctl) as c:
        c.post("/sites", json={"name": "shop-roll"}).raise_for_status()
        c.post(
            "/profiles", json={"name": "web-roll", "spec": {"config": {"v": 1}}}
        ).raise_for_status()
        token = c.post("/tokens", json={"site": "shop-roll", "profile": "web-roll"}).json()["token"]
    for _ in range(3):
        _enrol(ctl, token)
    with _api(ctl) as c:
        body = {"name": "web-roll", "spec": {"config": {"v": 2}}, "hold": True}
        c.post("/profiles", json=body).raise_for_status()
    _user(ctl, "olga", "operator")
    page = person(chromium)
    log_in(page, ctl.url, "olga", PASSWORD)

    page.goto(ctl.url + "/console/rollouts")
    page.select_option("select[name=profile]", "web-roll")
    page.fill("input[name=waves]", "1,100%")
    page.fill("input[name=bake_minutes]", "60")
    page.click("form[action$='/rollouts/plan'] button[type=submit]")
    page.wait_for_selector("#plan-result")
    assert "3 devices" in page.inner_text("#plan-result")
    _both_widths(page, "rollout-plan")
    page.fill("#plan-result input[name=reason]", "console test")
    page.click("#plan-result button[type=submit]")
    page.wait_for_selector("#rollout-state")
    rollout_id = page.url.split("/rollouts/")[1].split("?")[0]

    page.fill("#rollout-actions input[name=reason]", "store opening")
    page.click("#rollout-actions button:has-text('Pause')")
    page.wait_for_selector("#rollout-state:has-text('paused')")
    page.click("#rollout-actions button:has-text('Resume')")
    page.wait_for_selector("#rollout-state:has-text('running')")
    _both_widths(page, "rollout")
    with _api(ctl) as c:
        events = c.get(f"/rollouts/{rollout_id}").json()["events"]
    acted = [(e["actor"], e["action"], e["reason"]) for e in events if e["actor"] == "olga"]
    assert ("olga", "paused", "store opening") in acted
    assert any(action == "resumed" for _, action, _ in acted)


def test_a_viewer_sees_no_button_that_changes_anything_and_the_api_refuses_them_anyway(
    controller: ControllerProcess, chromium: Any
) -> None:
    ctl = controller
    with _api(ctl) as c:
        c.post("/sites", json={"name": "shop-view"}).raise_for_status()
        token = c.post("/tokens", json={"site": "shop-view", "require_approval": True}).json()
    device = _enrol(ctl, token["token"])
    viewer_token = _user(ctl, "vera", "viewer")
    page = person(chromium)
    log_in(page, ctl.url, "vera", PASSWORD)
    for path in (
        "/console/",
        "/console/devices",
        f"/console/devices/{device}",
        "/console/tokens",
        "/console/claims",
        "/console/rollouts",
        "/console/profiles",
        "/console/gitops",
    ):
        page.goto(ctl.url + path)
        posting = page.locator("form[method=post]:not([action$='/logout'])")
        assert posting.count() == 0, f"{path} offers a viewer {posting.count()} form(s)"
    _both_widths(page, "viewer-device")
    refused = httpx.post(
        f"{ctl.url}/api/v1/devices/{device}/approve",
        headers={"authorization": f"Bearer {viewer_token}"},
        verify=ctl.ca,
    )
    assert refused.status_code == 403, refused.text
    revoke = httpx.post(
        f"{ctl.url}/api/v1/tokens/{token['kid']}/revoke",
        headers={"authorization": f"Bearer {viewer_token}"},
        verify=ctl.ca,
    )
    assert revoke.status_code == 403, revoke.text
    with _api(ctl) as c:
        assert c.get(f"/devices/{device}").json()["state"] == "awaiting_approval"


def test_an_installer_scans_a_devices_claim_on_a_phone_and_the_agent_is_enrolled(
    controller: ControllerProcess, chromium: Any, tmp_path: Path
) -> None:
    """From the agent's PNG, through the login the scanned page asks for, to an approval
    by an installer of the site; the agent is enrolled within seconds."""
    ctl = controller
    with _api(ctl) as c:
        c.post("/sites", json={"name": "shop-claim"}).raise_for_status()
        c.post("/profiles", json={"name": "claim-cam", "spec": {}}).raise_for_status()
    _user(ctl, "ines", "installer", site="shop-claim")
    registration = claim_registration(ctl, tmp_path / "registration.yaml")
    agent = AgentProcess(registration, tmp_path / "claimer", "SN-CLAIM-1")
    try:
        png = agent.state_dir / "claim.png"
        wait_for(lambda: png.exists() and png.stat().st_size > 0, 60, "the agent's claim.png")
        url = zbar(png.read_bytes())[0]
        assert url.startswith(ctl.url + "/console/claims/clm-"), url
        shown = (agent.state_dir / "claim.txt").read_text()

        page = person(chromium, PHONE)
        page.goto(url)  # what the phone's camera opens
        assert "/console/login" in page.url
        page.fill("input[name=username]", "ines")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#claim-code")
        assert page.url == url
        code = page.inner_text("#claim-code").strip()
        assert f"code: {code}" in shown, (code, shown)
        screenshot(page, "claim-phone")
        page.select_option("select[name=site]", "shop-claim")
        page.select_option("select[name=profile]", "claim-cam")
        page.fill("input[name=name]", "door-cam")
        approved = time.monotonic()
        page.click("#approve-form button[type=submit]")
        wait_for(
            lambda: agent.state().get("phase") in ("enrolled", "ready"),
            10,
            "the agent enrolled",
            every=0.02,
        )
        took = time.monotonic() - approved
        assert took < 5, f"approved to enrolled took {took:.2f} s"
        page.wait_for_selector(".flash.ok")
        screenshot(page, "claim-approved-phone")
        with _api(ctl) as c:
            device = c.get(f"/devices/{agent.state()['device_id']}").json()
        assert (device["site"], device["profile"], device["name"]) == (
            "shop-claim",
            "claim-cam",
            "door-cam",
        )
    finally:
        agent.stop()


MAIN_PAGES = (
    ("overview", "/console/"),
    ("devices", "/console/devices"),
    ("claims", "/console/claims"),
    ("tokens", "/console/tokens"),
    ("profiles", "/console/profiles"),
    ("rollouts", "/console/rollouts"),
    ("repository", "/console/gitops"),
    ("users", "/console/users"),
    ("audit", "/console/audit"),
    ("account", "/console/account"),
)


def test_every_main_page_fits_a_phone_and_a_desktop(
    controller: ControllerProcess, chromium: Any
) -> None:
    """Screenshots of each page at both widths, and on a phone nothing wider than the
    screen (a table or form that forces sideways scrolling is unusable there)."""
    ctl = controller
    page = person(chromium, PHONE)
    log_in(page, ctl.url, "admin", ctl.admin_password)
    wide = []
    for name, path in MAIN_PAGES:
        page.set_viewport_size(PHONE)
        page.goto(ctl.url + path)
        assert page.locator("main h1").count() >= 1, path
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 1:
            wide.append(f"{path} is {overflow}px wider than a phone")
        _both_widths(page, f"page-{name}")
    assert not wide, wide
