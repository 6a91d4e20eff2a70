"""A device that lost its key (storage wiped, board swapped back in) gets a new key only
through an operator, and keeps its id and history."""

from __future__ import annotations

from cryptography import x509

from edgefleet.signing import spki_pin
from tests.support.apiclient import Api, TestDevice, new_key


def test_new_key_for_known_hardware_waits_for_approval_and_keeps_the_device(api: Api) -> None:
    api.site()
    api.profile("retail", {"config": {"camera": "front"}})
    token = api.token(profile="retail", labels={"tier": "gold"})["token"]
    dev = api.device(token, hardware_id="hw-1", serial="SN-1")
    before = api.ok("GET", f"/devices/{dev.id}", api.admin)

    new = new_key()
    first = api.enrol(token, new, hardware_id="hw-1", serial="SN-1")
    assert (first.status_code, first.json()["device_id"]) == (202, dev.id)
    again = api.enrol(token, new, hardware_id="hw-1", serial="SN-1")
    assert (again.status_code, again.json()["device_id"]) == (202, dev.id)
    listed = api.ok("GET", "/devices", api.admin)
    assert [(d["id"], d["rekey_pending"]) for d in listed] == [(dev.id, True)]
    assert api.ok("GET", "/tokens", api.admin)[0]["uses"] == 1

    api.ok("POST", f"/devices/{dev.id}/approve", api.admin)
    done = api.enrol(token, new, hardware_id="hw-1", serial="SN-1")
    assert done.status_code == 200, done.text
    leaf = x509.load_pem_x509_certificates(done.json()["certificate_chain"].encode())[0]
    assert spki_pin(leaf.public_key()) == spki_pin(new.public_key())
    after = api.ok("GET", f"/devices/{dev.id}", api.admin)
    for kept in ("id", "site", "profile", "labels", "enrolled_at"):
        assert after[kept] == before[kept], kept
    assert not after["rekey_pending"]

    stale = api.call("GET", f"/devices/{dev.id}/desired", dev.access_token)
    assert (stale.status_code, stale.json()["error"]["code"]) == (401, "token_revoked")
    old = api.call("POST", "/auth/token", json={"client_assertion": api.assertion(dev)})
    assert (old.status_code, old.json()["error"]["code"]) == (401, "bad_signature")
    renewed = TestDevice(dev.id, new)
    api.login(renewed)
    assert api.call("GET", f"/devices/{dev.id}/desired", renewed.access_token).status_code == 200
    actions = [a["action"] for a in api.ok("GET", "/audit", api.admin)]
    assert "device.rekey.request" in actions and "device.rekey.approve" in actions


def test_rejected_new_key_leaves_the_device_as_it_was(api: Api) -> None:
    api.site()
    token = api.token()["token"]
    dev = api.device(token, hardware_id="hw-2")
    assert api.enrol(token, new_key(), hardware_id="hw-2").status_code == 202
    api.ok("POST", f"/devices/{dev.id}/reject", api.admin)
    shown = api.ok("GET", f"/devices/{dev.id}", api.admin)
    assert (shown["state"], shown["rekey_pending"]) == ("enrolled", False)
    assert api.call("GET", f"/devices/{dev.id}/desired", dev.access_token).status_code == 200


def test_same_hardware_id_at_another_site_is_another_device(api: Api) -> None:
    api.site("shop-1")
    api.site("shop-2")
    one = api.device(api.token(site="shop-1")["token"], hardware_id="hw-3")
    other = api.enrol(api.token(site="shop-2")["token"], new_key(), hardware_id="hw-3")
    assert other.status_code == 200 and other.json()["device_id"] != one.id
