"""Enrolment through the real app: tokens bind site, labels and profile; uses are
counted atomically; approval holds a device; a retry with the same key is the same
device; refusals change nothing."""

from __future__ import annotations

import threading

from sqlalchemy import text

from tests.support.apiclient import Api, new_key


def _count(api: Api, table: str) -> int:
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_enrolled_device_gets_certificate_profile_and_site_labels(api: Api) -> None:
    api.site("shop-1")
    api.profile("retail", {"config": {"camera": "front"}})
    tok = api.token(profile="retail", labels={"tier": "gold"})
    r = api.enrol(tok["token"], serial="SN1", hardware_id="hw1")
    assert r.status_code == 200
    body = r.json()
    assert body["state"] == "enrolled" and body["profile"] == "retail"
    assert "BEGIN CERTIFICATE" in body["certificate_chain"]
    listed = api.ok("GET", "/devices", api.admin)
    assert [(d["id"], d["site"], d["labels"], d["serial"]) for d in listed] == [
        (body["device_id"], "shop-1", {"tier": "gold"}, "SN1")
    ]


def test_retry_with_same_key_is_same_device_and_spends_no_use(api: Api) -> None:
    api.site()
    tok = api.token(max_uses=1)
    key = new_key()
    first = api.enrol(tok["token"], key).json()
    again = api.enrol(tok["token"], key)
    assert again.status_code == 200
    assert again.json()["device_id"] == first["device_id"]
    assert api.ok("GET", "/tokens", api.admin)[0]["uses"] == 1
    assert _count(api, "device") == 1


def test_token_secret_is_stored_only_as_hash(api: Api) -> None:
    api.site()
    tok = api.token()
    secret = tok["token"].split(".")[2]
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(text("SELECT * FROM registrationtoken")).all()
    assert rows and all(secret not in str(tuple(row)) for row in rows)
    assert all("token" not in t for t in api.ok("GET", "/tokens", api.admin))


def test_two_agents_racing_for_last_use_one_wins(api: Api) -> None:
    api.site()
    tok = api.token(max_uses=1)
    results: list[int] = []
    barrier = threading.Barrier(4)

    def attempt() -> None:
        barrier.wait()
        results.append(api.enrol(tok["token"]).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [200, 410, 410, 410]
    assert _count(api, "device") == 1
    assert api.ok("GET", "/tokens", api.admin)[0]["uses"] == 1


def test_approval_holds_device_until_operator_approves(api: Api) -> None:
    api.site()
    tok = api.token(require_approval=True)
    key = new_key()
    waiting = api.enrol(tok["token"], key)
    assert waiting.status_code == 202
    assert waiting.json()["state"] == "awaiting_approval"
    assert waiting.json()["certificate_chain"] is None
    device_id = waiting.json()["device_id"]
    still = api.enrol(tok["token"], key)
    assert (still.status_code, still.json()["device_id"]) == (202, device_id)
    approved = api.ok("POST", f"/devices/{device_id}/approve", api.admin)
    assert approved["state"] == "enrolled"
    done = api.enrol(tok["token"], key)
    assert done.status_code == 200 and "BEGIN CERTIFICATE" in done.json()["certificate_chain"]
    audit = api.ok("GET", "/audit", api.admin)
    assert any(a["action"] == "device.approve" and a["target"] == device_id for a in audit)


def test_rejected_device_cannot_enrol_with_that_key(api: Api) -> None:
    api.site()
    tok = api.token(require_approval=True)
    key = new_key()
    device_id = api.enrol(tok["token"], key).json()["device_id"]
    api.ok("POST", f"/devices/{device_id}/reject", api.admin)
    r = api.enrol(tok["token"], key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "rejected"


def test_allow_list_admits_listed_serials_only(api: Api) -> None:
    api.site()
    tok = api.token(allowed_serials=["SN-OK"], allowed_hardware_ids=[])
    refused = api.enrol(tok["token"], serial="SN-OTHER")
    assert refused.status_code == 403
    assert "SN-OTHER" in refused.json()["error"]["message"]
    assert api.enrol(tok["token"], serial="SN-OK").status_code == 200
    hw = api.token(allowed_hardware_ids=["hw-1"])
    assert api.enrol(hw["token"], hardware_id="hw-2").status_code == 403
    assert api.ok("GET", "/tokens", api.admin)[0]["uses"] == 1
    assert _count(api, "device") == 1


def test_revoked_expired_and_exhausted_tokens_are_gone_with_reason(api: Api) -> None:
    api.site()
    revoked = api.token()
    api.ok("POST", f"/tokens/{revoked['kid']}/revoke", api.admin)
    exhausted = api.token(max_uses=1)
    assert api.enrol(exhausted["token"]).status_code == 200
    expired = api.token(expires_in_seconds=60)
    with api.client.app.state.rt.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            text("UPDATE registrationtoken SET expires_at = :t WHERE kid = :k"),
            {"t": "2000-01-01 00:00:00+00:00", "k": expired["kid"]},
        )
    before = _count(api, "device")
    for tok, code in [
        (revoked, "token_revoked"),
        (exhausted, "token_exhausted"),
        (expired, "token_expired"),
    ]:
        r = api.enrol(tok["token"])
        assert r.status_code == 410, r.text
        assert r.json()["error"]["code"] == code
        assert tok["kid"] in r.json()["error"]["message"]
    assert _count(api, "device") == before


def test_registration_file_from_token_names_controller_and_pin(api: Api) -> None:
    api.site()
    tok = api.token()
    reg = tok["registration"]
    info = api.ok("GET", "/controller", api.admin)
    assert reg["controller_id"] == info["controller_id"] == api.controller_id
    assert reg["root_pins"] == info["root_pins"]
    assert reg["token"] == tok["token"]
