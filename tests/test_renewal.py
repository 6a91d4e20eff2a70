"""Renewal and re-enrolment by proof of the key on record: the new key takes over at
once, the old one stops working everywhere, and an expired certificate is no obstacle
for a device that still holds its key."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from sqlalchemy import text

from edgefleet.signing import renewal_proof, spki_pin
from tests.support.apiclient import Api, TestDevice, csr_for, new_key


def _renew(api: Api, dev: TestDevice, new: Any, signer: Any = None, csr: str | None = None) -> Any:
    csr = csr or csr_for(new)
    proof = renewal_proof(signer or dev.key, dev.id, api.controller_id, csr, time.time())
    return api.call("POST", f"/devices/{dev.id}/renew", json={"csr": csr, "proof": proof})


def _exchange(api: Api, dev: TestDevice, key: Any) -> Any:
    assertion = api.assertion(dev, key=key)
    return api.call("POST", "/auth/token", json={"client_assertion": assertion})


def test_renewal_swaps_key_and_refuses_the_old_one_at_once(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    old_token = dev.access_token
    new = new_key()
    r = _renew(api, dev, new)
    assert r.status_code == 200, r.text
    leaf = x509.load_pem_x509_certificates(r.json()["certificate_chain"].encode())[0]
    assert spki_pin(leaf.public_key()) == spki_pin(new.public_key())
    assert r.json()["message"] == "renewed"
    refused = api.call("GET", f"/devices/{dev.id}/desired", old_token)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "token_revoked")
    old_key = _exchange(api, dev, dev.key)
    assert (old_key.status_code, old_key.json()["error"]["code"]) == (401, "bad_signature")
    assert _exchange(api, dev, new).status_code == 200
    audit = api.ok("GET", "/audit", api.admin)
    assert any(a["action"] == "device.renew" and a["target"] == dev.id for a in audit)


def test_retry_with_the_new_key_already_on_record_reissues(api: Api) -> None:
    """The answer to a renewal was lost: the device signs with the new key next time."""
    api.site()
    dev = api.device(api.token()["token"])
    new = new_key()
    assert _renew(api, dev, new).status_code == 200
    again = _renew(api, dev, new, signer=new)
    assert again.status_code == 200, again.text


def test_expired_certificate_re_enrols_by_proving_the_old_key(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    with api.client.app.state.rt.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            text("UPDATE device SET certificate_not_after = :t WHERE id = :d"),
            {"t": datetime.now(UTC) - timedelta(days=1), "d": dev.id},
        )
    api.client.app.state.rt.changed()  # type: ignore[attr-defined]
    expired = _exchange(api, dev, dev.key)
    assert (expired.status_code, expired.json()["error"]["code"]) == (401, "certificate_expired")
    assert f"/devices/{dev.id}/renew" in expired.json()["error"]["message"]
    new = new_key()
    r = _renew(api, dev, new)
    assert (r.status_code, r.json()["message"]) == (200, "re-enrolled")
    assert _exchange(api, dev, new).status_code == 200
    audit = api.ok("GET", "/audit", api.admin)
    assert any(a["action"] == "device.reenrol" and a["actor"] == f"device:{dev.id}" for a in audit)


def test_refusals_change_nothing(api: Api) -> None:
    api.site()
    token = api.token()["token"]
    dev, other = api.device(token), api.device(token)
    new = new_key()
    foreign = _renew(api, dev, new, signer=other.key)
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (401, "bad_signature")
    taken = _renew(api, dev, other.key)
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "key_in_use")
    proof = renewal_proof(dev.key, dev.id, api.controller_id, csr_for(new_key()), time.time())
    mismatch = api.call(
        "POST", f"/devices/{dev.id}/renew", json={"csr": csr_for(new), "proof": proof}
    )
    assert (mismatch.status_code, mismatch.json()["error"]["code"]) == (400, "proof_mismatch")
    wrong_path = _renew(api, other, new, signer=dev.key)
    assert wrong_path.status_code in (401, 403)
    assert _exchange(api, dev, dev.key).status_code == 200
    assert _exchange(api, other, other.key).status_code == 200


def test_decommissioned_device_cannot_renew(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    api.ok("POST", f"/devices/{dev.id}/decommission", api.admin)
    r = _renew(api, dev, new_key())
    assert (r.status_code, r.json()["error"]["code"]) == (403, "device_decommissioned")


def test_replayed_proof_is_refused(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    new = new_key()
    csr = csr_for(new)
    body = {
        "csr": csr,
        "proof": renewal_proof(dev.key, dev.id, api.controller_id, csr, time.time()),
    }
    assert api.call("POST", f"/devices/{dev.id}/renew", json=body).status_code == 200
    again = api.call("POST", f"/devices/{dev.id}/renew", json=body)
    assert again.status_code == 401
