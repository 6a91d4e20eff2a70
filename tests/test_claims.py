"""QR claims shown by devices, through the real app on SQLite and PostgreSQL: a device
creates a claim with its CSR, polls it with its secret (held open until a person
decides), and an operator or the site's installer approves it into a site or rejects it.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from edgefleet.controller.services.claims import CODE_ALPHABET, CODE_LENGTH
from edgefleet.controller.settings import Settings, load_settings
from edgefleet.signing import make_assertion
from tests.support.apiclient import Api, csr_for, new_key

BURST = 8
INVENTORY = {"serial": "SN-1", "hardware_id": "hw-1", "hostname": "till-3", "arch": "aarch64"}


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    """The suite's settings, with a small burst of new claims per address."""
    return load_settings(
        data_dir=tmp_path / "controller",
        database_url=database_url,
        device_interval_seconds=1,
        last_seen_flush_seconds=0.2,
        gitops_debounce_seconds=0.2,
        claim_burst=BURST,
        claim_rate_per_second=0.01,
    )


def create(api: Api, key: Any = None, **inventory: Any) -> dict[str, Any]:
    r = api.call("POST", "/claims", json={"csr": csr_for(key or new_key()), "inventory": inventory})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def poll(api: Api, claim: dict[str, Any], wait: float = 0, secret: str | None = None) -> Any:
    auth = {"authorization": f"Claim {secret or claim['secret']}"}
    return api.call("GET", f"/claims/{claim['id']}/poll?wait={wait}", headers=auth)


def count(api: Api, table: str) -> int:
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        return conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one()  # type: ignore[no-any-return]


def set_expiry(api: Api, claim_id: str, when: datetime) -> None:
    with api.client.app.state.rt.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            text("UPDATE claim SET expires_at = :t WHERE id = :id"), {"t": when, "id": claim_id}
        )


def world(api: Api) -> dict[str, str]:
    """Two sites, a profile, and an installer of each site."""
    api.site("shop-a")
    api.site("shop-b")
    api.profile("retail", {"config": {"n": 1}})
    return {
        "a": api.user("inst-a", "installer", site="shop-a"),
        "b": api.user("inst-b", "installer", site="shop-b"),
        "viewer": api.user("view", "viewer"),
    }


# -- the device's side -------------------------------------------------------------------


def test_a_claim_gives_the_device_a_code_and_a_page_and_keeps_only_the_secrets_hash(
    api: Api,
) -> None:
    made = create(api, **INVENTORY)
    assert made["id"].startswith("clm-")
    assert len(made["code"]) == CODE_LENGTH and set(made["code"]) <= set(CODE_ALPHABET)
    assert made["url"] == f"https://127.0.0.1:8443/console/claims/{made['id']}"
    assert len(made["secret"]) >= 40 and made["poll_seconds"] == 20
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)

    seen = api.ok("GET", f"/claims/{made['id']}", api.admin)
    assert (seen["code"], seen["state"], seen["serial"], seen["hostname"]) == (
        made["code"],
        "pending",
        "SN-1",
        "till-3",
    )
    assert seen["inventory"]["arch"] == "aarch64" and seen["remote_addr"] == "testclient"
    assert 3500 < seen["expires_in_seconds"] <= 3600 and seen["device_id"] is None
    assert made["secret"] not in str(seen)
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        stored = conn.execute(text("SELECT * FROM claim")).mappings().one()
    assert made["secret"] not in str(dict(stored))

    answer = poll(api, made).json()
    assert answer["state"] == "pending" and answer["enrolment"] is None
    assert "waiting for a person" in answer["message"]


def test_the_same_key_again_gets_the_same_claim_and_a_new_secret(api: Api) -> None:
    key = new_key()
    first = create(api, key)
    again = create(api, key)
    assert (again["id"], again["code"], again["expires_at"]) == (
        first["id"],
        first["code"],
        first["expires_at"],
    )
    assert again["secret"] != first["secret"]
    refused = poll(api, first)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "claim_secret"
    assert "create the claim again" in refused.json()["error"]["message"]
    assert poll(api, again).json()["state"] == "pending"
    assert count(api, "claim") == 1


def test_a_claim_secret_opens_its_own_poll_and_nothing_else(api: Api) -> None:
    mine, other = create(api), create(api)
    assert poll(api, other, secret=mine["secret"]).status_code == 401
    unknown = {**mine, "id": "clm-0000000000000000"}
    assert poll(api, unknown).status_code == 401
    claim_auth = {"authorization": f"Claim {mine['secret']}"}
    for path in ("/claims", f"/claims/{mine['id']}", "/devices"):
        r = api.call("GET", path, headers=claim_auth)
        assert r.status_code == 401, (path, r.text)
    r = api.call("POST", f"/claims/{mine['id']}/approve", headers=claim_auth, json={"site": "x"})
    assert r.status_code == 401
    bearer = api.call("GET", f"/claims/{mine['id']}/poll", api.admin)
    assert bearer.status_code == 401 and "Authorization: Claim" in bearer.text


def test_poll_held_open_answers_the_moment_the_claim_is_approved(api: Api) -> None:
    """The waiting poll is woken by the approval (well under the 5 s recheck)."""
    installers = world(api)
    made = create(api, **INVENTORY)
    answered: dict[str, Any] = {}

    def wait() -> None:
        r = poll(api, made, wait=15)
        answered["at"] = time.monotonic()
        answered["r"] = r

    waiter = threading.Thread(target=wait)
    started = time.monotonic()
    waiter.start()
    time.sleep(0.5)
    assert "r" not in answered, "the poll must be held while the claim is pending"
    body = {"site": "shop-a", "profile": "retail", "labels": {"lane": "3"}, "name": "till-3"}
    approved = api.ok("POST", f"/claims/{made['id']}/approve", installers["a"], json=body)
    decided = time.monotonic()
    waiter.join(10)
    latency = answered["at"] - decided
    print(f"poll answered {latency * 1000:.1f} ms after the approval's answer")
    assert latency < 1.0, latency
    assert answered["at"] - started < 5.0

    status = answered["r"].json()
    assert status["state"] == "approved" and status["message"] == "approved"
    enrolment = status["enrolment"]
    assert enrolment["device_id"] == approved["device_id"]
    assert (enrolment["state"], enrolment["profile"]) == ("enrolled", "retail")
    assert enrolment["controller_id"] == api.controller_id
    assert "inst-a" not in answered["r"].text, "operators' names stay on the controller"
    cert = x509.load_pem_x509_certificate(enrolment["certificate_chain"].encode())
    assert approved["device_id"] in cert.subject.rfc4514_string()

    device = api.ok("GET", f"/devices/{approved['device_id']}", api.admin)
    assert (device["state"], device["site"], device["profile"]) == ("enrolled", "shop-a", "retail")
    assert device["labels"] == {"lane": "3"} and device["serial"] == "SN-1"
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        name = conn.execute(
            text("SELECT name FROM device WHERE id = :id"), {"id": approved["device_id"]}
        ).scalar_one()
    assert name == "till-3"
    assert approved["state"] == "approved" and approved["decided_by"] == "inst-a"
    assert (approved["site"], approved["name"], approved["labels"]) == (
        "shop-a",
        "till-3",
        {"lane": "3"},
    )
    audit = api.ok("GET", "/audit", api.admin)
    assert any(a["action"] == "claim.approve" and a["target"] == made["id"] for a in audit)

    assert poll(api, made).json()["enrolment"] == enrolment, "asking again is idempotent"


def test_a_decision_in_another_process_wakes_the_held_poll(api: Api, settings: Settings) -> None:
    """A second app on the same database stands for another worker or replica: its own
    listener (socket or LISTEN connection), its own caches."""
    from fastapi.testclient import TestClient

    from edgefleet.controller.app import create_app

    world(api)
    made = create(api)
    other = create_app(settings)
    answered: dict[str, Any] = {}

    def wait() -> None:
        answered["r"] = poll(api, made, wait=15)
        answered["at"] = time.monotonic()

    try:
        with TestClient(other, base_url="https://testserver") as client:
            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.5)
            assert "r" not in answered
            r = client.post(
                f"/api/v1/claims/{made['id']}/reject",
                headers=api.auth(api.admin),
                json={"reason": "elsewhere"},
            )
            decided = time.monotonic()
            assert r.status_code == 200, r.text
            waiter.join(10)
    finally:
        other.state.rt.engine.dispose()
    latency = answered["at"] - decided
    print(f"poll answered {latency * 1000:.1f} ms after another process's decision")
    assert latency < 1.0, latency
    assert answered["r"].json()["state"] == "rejected"


def test_an_approved_device_holds_credentials_and_its_site_repository_is_written(
    api: Api,
) -> None:
    world(api)
    key = new_key()
    made = create(api, key, **INVENTORY)
    approved = api.ok("POST", f"/claims/{made['id']}/approve", api.admin, json={"site": "shop-b"})
    device_id = approved["device_id"]
    assertion = make_assertion(key, device_id, api.controller_id)
    r = api.call("POST", "/auth/token", json={"client_assertion": assertion})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    desired = api.call("GET", f"/devices/{device_id}/desired", token)
    assert desired.status_code == 200 and desired.json()["device_id"] == device_id

    deadline = time.monotonic() + 15
    while True:
        log = api.ok("GET", "/gitops/shop-b/log", api.admin)
        if made["id"] in str(log):
            break
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    again = api.call("POST", "/claims", json={"csr": csr_for(key)})
    assert again.status_code == 409 and again.json()["error"]["code"] == "key_in_use"


def test_approving_twice_makes_one_device(api: Api) -> None:
    """Two clicks at once (and one later): one device, the others told who approved."""
    world(api)
    made = create(api)
    results: list[Any] = []

    def click() -> None:
        results.append(
            api.call("POST", f"/claims/{made['id']}/approve", api.admin, json={"site": "shop-a"})
        )

    clicks = [threading.Thread(target=click) for _ in range(3)]
    for t in clicks:
        t.start()
    for t in clicks:
        t.join(30)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 409, 409], [r.text for r in results]
    device_id = next(r.json()["device_id"] for r in results if r.status_code == 200)
    refused = next(r.json()["error"] for r in results if r.status_code == 409)
    assert refused["code"] == "claim_decided"
    assert "already approved by admin" in refused["message"] and device_id in refused["message"]
    assert count(api, "device") == 1


def test_a_rejected_claim_tells_the_device_why_and_can_no_longer_be_decided(api: Api) -> None:
    world(api)
    made = create(api)
    rejected = api.ok(
        "POST", f"/claims/{made['id']}/reject", api.admin, json={"reason": "not ours"}
    )
    assert rejected["state"] == "rejected" and rejected["reason"] == "not ours"
    status = poll(api, made, wait=5).json()
    assert status["state"] == "rejected" and status["message"].endswith(": not ours")
    again = api.call("POST", f"/claims/{made['id']}/approve", api.admin, json={"site": "shop-a"})
    assert again.status_code == 409 and "already rejected by admin" in again.text
    assert api.call("POST", f"/claims/{made['id']}/reject", api.admin).status_code == 409
    assert count(api, "device") == 0
    assert api.ok("GET", f"/claims/{made['id']}", api.admin)["reason"] == "not ours"


def test_an_expired_claim_cannot_be_decided_and_its_key_gets_a_fresh_one(api: Api) -> None:
    world(api)
    key = new_key()
    made = create(api, key)
    set_expiry(api, made["id"], datetime.now(UTC) - timedelta(seconds=1))
    status = poll(api, made, wait=5).json()
    assert status["state"] == "expired" and "make a new one" in status["message"]
    r = api.call("POST", f"/claims/{made['id']}/approve", api.admin, json={"site": "shop-a"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "claim_expired"
    assert "scan that one" in r.json()["error"]["message"]
    assert count(api, "device") == 0
    ids = lambda state: [c["id"] for c in api.ok("GET", f"/claims?state={state}", api.admin)]  # noqa: E731
    assert ids("expired") == [made["id"]] and ids("pending") == []

    fresh = create(api, key)
    assert fresh["id"] != made["id"]
    assert ids("pending") == [fresh["id"]] and ids("expired") == [made["id"]]
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        stored = conn.execute(
            text("SELECT state FROM claim WHERE id = :id"), {"id": made["id"]}
        ).scalar_one()
    assert stored == "expired"


def test_installers_approve_into_their_own_site_and_see_their_sites_decisions(api: Api) -> None:
    tokens = world(api)
    one, two, three = create(api), create(api), create(api)
    for who in ("a", "b", "viewer"):
        assert {c["id"] for c in api.ok("GET", "/claims", tokens[who])} == {
            one["id"],
            two["id"],
            three["id"],
        }, f"{who}: pending claims belong to no site"

    r = api.call("POST", f"/claims/{one['id']}/approve", tokens["a"], json={"site": "shop-b"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "other_site"
    assert "own site" in r.json()["error"]["message"]
    assert api.ok("GET", f"/claims/{one['id']}", api.admin)["state"] == "pending"
    assert count(api, "device") == 0
    viewer = api.call("POST", f"/claims/{one['id']}/approve", tokens["viewer"], json={"site": "x"})
    assert viewer.status_code == 403

    api.ok("POST", f"/claims/{one['id']}/approve", tokens["a"], json={"site": "shop-a"})
    api.ok("POST", f"/claims/{two['id']}/reject", tokens["b"], json={})
    seen = {who: {c["id"] for c in api.ok("GET", "/claims", tokens[who])} for who in tokens}
    assert seen["a"] == {one["id"], three["id"]}
    assert seen["b"] == {two["id"], three["id"]}
    assert seen["viewer"] == {one["id"], two["id"], three["id"]}
    assert api.call("GET", f"/claims/{one['id']}", tokens["b"]).status_code == 404
    assert api.call("GET", f"/claims/{two['id']}", tokens["a"]).status_code == 404
    r = api.call("POST", f"/claims/{one['id']}/reject", tokens["b"])
    assert r.status_code == 404, "an installer may not learn of another site's devices"
    approved = api.ok("GET", "/claims?state=approved", tokens["a"])
    assert [c["id"] for c in approved] == [one["id"]] and approved[0]["site"] == "shop-a"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"csr": "not a csr"}, 400, "not a PEM certificate signing request"),
        ({"csr": "RSA"}, 400, "must be EC P-256"),
        ({}, 422, "csr: Field required"),
        ({"csr": "x" * 9000}, 422, "at most 8192 characters"),
        ({"csr": "VALID", "inventory": {"cpu_count": "many"}}, 422, "inventory.cpu_count"),
        ({"csr": "VALID", "inventory": {"colour": "red"}}, 422, "inventory.colour"),
        ({"csr": "VALID", "token": "efr.x.y"}, 422, "token: Extra inputs"),
    ],
)
def test_bad_claims_are_refused_with_a_reason_and_store_nothing(
    api: Api, body: dict[str, Any], status: int, says: str
) -> None:
    if body.get("csr") == "VALID":
        body["csr"] = csr_for(new_key())
    if body.get("csr") == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        body["csr"] = csr.public_bytes(serialization.Encoding.PEM).decode()
    r = api.call("POST", "/claims", json=body)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"], r.text
    assert count(api, "claim") == 0


def test_bad_decisions_and_polls_are_refused_and_change_nothing(api: Api) -> None:
    world(api)
    made = create(api)
    url = f"/claims/{made['id']}/approve"
    for body, status, code in [
        ({"site": "nowhere"}, 404, "no_site"),
        ({"site": "shop-a", "profile": "nothing"}, 404, "no_profile"),
        ({"site": "shop-a", "labels": {"": "x"}}, 422, "invalid_request"),
        ({"site": "shop-a", "labels": {"k": 5}}, 422, "invalid_request"),
        ({"site": "shop-a", "colour": "red"}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
    ]:
        r = api.call("POST", url, api.admin, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
    r = api.call("POST", f"/claims/{made['id']}/reject", api.admin, json={"reason": "x" * 300})
    assert r.status_code == 422
    r = api.call("POST", "/claims/clm-nope/approve", api.admin, json={"site": "shop-a"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_claim"
    assert api.call("GET", "/claims?state=bogus", api.admin).status_code == 400
    assert api.call("GET", f"/claims/{made['id']}/poll").status_code == 401
    assert poll(api, made, wait=-1).status_code == 422
    assert poll(api, made, wait=61).status_code == 422
    assert api.ok("GET", f"/claims/{made['id']}", api.admin)["state"] == "pending"
    assert count(api, "device") == 0


def test_new_claims_are_rate_limited_per_address(api: Api) -> None:
    for _ in range(BURST):
        create(api)
    r = api.call("POST", "/claims", json={"csr": csr_for(new_key())})
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert "too many claim requests from testclient" in r.json()["error"]["message"]
    assert count(api, "claim") == BURST


def test_a_claim_names_the_devices_that_already_have_its_hardware_id(api: Api) -> None:
    tokens = world(api)
    for site in ("shop-a", "shop-b"):
        api.enrol(api.token(site=site)["token"], hardware_id="hw-1")
    made = create(api, hardware_id="hw-1")
    seen = api.ok("GET", f"/claims/{made['id']}", api.admin)["same_hardware_id"]
    assert sorted(d["site"] for d in seen) == ["shop-a", "shop-b"]
    assert all(d["state"] == "enrolled" for d in seen)
    mine = api.ok("GET", f"/claims/{made['id']}", tokens["a"])["same_hardware_id"]
    assert [d["site"] for d in mine] == ["shop-a"], "installers see their own site's only"
    other = create(api, hardware_id="hw-2")
    assert api.ok("GET", f"/claims/{other['id']}", api.admin)["same_hardware_id"] == []
    approved = api.ok("POST", f"/claims/{made['id']}/approve", api.admin, json={"site": "shop-a"})
    after = api.ok("GET", f"/claims/{made['id']}", api.admin)["same_hardware_id"]
    assert approved["device_id"] not in str(after) and len(after) == 2


def test_a_key_that_is_already_enrolled_cannot_claim(api: Api) -> None:
    api.site("shop-a")
    key = new_key()
    assert api.enrol(api.token(site="shop-a")["token"], key).status_code == 200
    r = api.call("POST", "/claims", json={"csr": csr_for(key)})
    assert r.status_code == 409 and "already enrolled as device" in r.text
    assert count(api, "claim") == 0
