"""Hostile and broken input at the device-facing door: every refusal is a clear 4xx whose
body ``{"error": {"code", "message"}}`` says what is wrong, and nothing is stored (no
device, no token use, no spent assertion, no status).

The cases of one kind are a table checked in one test per database (a controller costs
a few hundred milliseconds to set up); a failure names the case.
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import text

from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import sites, tokens
from edgefleet.controller.services.users import SYSTEM
from edgefleet.controller.settings import load_settings
from tests.support.apiclient import API, Api, csr_for, new_key
from tests.support.apiclient import TestDevice as Device  # not a test class

Json = dict[str, Any]


# -- helpers -----------------------------------------------------------------------------


def stored(api: Api) -> dict[str, Any]:
    """Everything a refused device request must leave as it was."""
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]

        def one(sql: str) -> Any:
            return conn.execute(text(sql)).scalar_one()

        return {
            "devices": one("SELECT count(*) FROM device"),
            "token uses": one("SELECT coalesce(sum(uses), 0) FROM registrationtoken"),
            "used assertions": one("SELECT count(*) FROM usedassertion"),
            "statuses": one("SELECT count(*) FROM device WHERE status_digest IS NOT NULL"),
        }


def refusal(r: Any, status: int, code: str, *words: str) -> str | None:
    """None if ``r`` is the refusal described, else what is wrong with it."""
    if r.status_code != status:
        return f"want {status}, got {r.status_code} {r.text[:300]}"
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"the body is not {{'error': {{code, message}}}}: {r.text[:300]}"
    if error.get("code") != code:
        return f"want code {code!r}, got {error}"
    missing = [w for w in words if w not in error.get("message", "")]
    if missing:
        return f"the message {error.get('message')!r} does not name {missing}"
    return None


@dataclass(frozen=True)
class Case:
    name: str
    request: Callable[[Any], Any]
    """Sends the hostile request (given the test's world) and returns the response."""
    status: int
    code: str
    words: tuple[str, ...] = ()


def check_all(api: Api, world: Any, cases: list[Case]) -> None:
    """Send every case; each must be refused as described and store nothing."""
    wrong = []
    for case in cases:
        before = stored(api)
        problem = refusal(case.request(world), case.status, case.code, *case.words)
        after = stored(api)
        if problem is None and after != before:
            problem = f"refused, but stored something: {before} -> {after}"
        if problem is not None:
            wrong.append(f"{case.name}: {problem}")
    assert not wrong, f"{len(wrong)} of {len(cases)} cases are wrong:\n" + "\n".join(wrong)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(header: Json, claims: Json) -> str:
    return (
        ".".join(b64url(json.dumps(part).encode()) for part in (header, claims)) + "." + b64url(b"")
    )


def alter_signature(token: str) -> str:
    """The same token with one byte of its signature changed (not a padding bit)."""
    head, _, sig = token.rpartition(".")
    middle = len(sig) // 2
    return f"{head}.{sig[:middle]}{'A' if sig[middle] != 'A' else 'B'}{sig[middle + 1 :]}"


@functools.cache
def rsa_csr() -> str:
    return csr_for(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@functools.cache
def p384_csr() -> str:
    return csr_for(ec.generate_private_key(ec.SECP384R1()))


def csr_with_bad_signature() -> str:
    """A well-formed P-256 CSR whose signature's last byte is changed."""
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s
    tampered = x509.load_der_x509_csr(bytes(der))
    return tampered.public_bytes(serialization.Encoding.PEM).decode()


def enrol(api: Api, token: str, csr: str | None = None, **extra: Any) -> Any:
    return api.call(
        "POST", "/enrol", json={"token": token, "csr": csr or csr_for(new_key()), **extra}
    )


def exchange(api: Api, assertion: str) -> Any:
    return api.call("POST", "/auth/token", json={"client_assertion": assertion})


def assertion_claims(device_id: str, audience: str, **overrides: Any) -> Json:
    now = int(time.time())
    claims: Json = {
        "iss": device_id,
        "sub": device_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": f"jti-{time.monotonic_ns()}",
    }
    claims.update(overrides)
    return claims


def access_key(api: Api) -> tuple[str, bytes]:
    """The (kid, HMAC key) the controller signs access tokens with, from its data dir."""
    data_dir: Path = api.client.app.state.rt.settings.data_dir  # type: ignore[attr-defined]
    kid, hexkey = (data_dir / "access-token.key").read_text().split()
    return kid, bytes.fromhex(hexkey)


def access_token(api: Api, device_id: str, key: bytes, kid: str, **overrides: Any) -> str:
    now = int(time.time())
    claims: Json = {
        "sub": device_id,
        "gen": 1,
        "aud": api.controller_id,
        "typ": "device",
        "iat": now,
        "nbf": now - 60,
        "exp": now + 600,
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def foreign_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real registration token, for a site of the same name, from another controller."""
    settings = load_settings(data_dir=tmp_path_factory.mktemp("other") / "controller")
    prepare(settings)
    rt = Runtime(settings)
    sites.create_site(rt.engine, SYSTEM, "shop-1")
    yield tokens.create_token(rt, SYSTEM, tokens.TokenCreate(site="shop-1"))["token"]
    rt.engine.dispose()


# -- enrolment ---------------------------------------------------------------------------


class EnrolWorld:
    def __init__(self, api: Api, foreign: str) -> None:
        api.site("shop-1")
        self.api = api
        self.good = api.token()
        self.foreign = foreign
        self.revoked = api.token()
        api.ok("POST", f"/tokens/{self.revoked['kid']}/revoke", api.admin)
        self.exhausted = api.token(max_uses=1)
        assert enrol(api, self.exhausted["token"]).status_code == 200

    def tampered(self) -> str:
        prefix, kid, secret = self.good["token"].split(".")
        changed = ("b" if secret[5] == "a" else "a").join((secret[:5], secret[6:]))
        return f"{prefix}.{kid}.{changed}"

    def unknown_kid(self) -> str:
        prefix, _kid, secret = self.good["token"].split(".")
        return f"{prefix}.0123456789ab.{secret}"


def _enrol_case(name: str, status: int, code: str, *words: str, **body: Any) -> Case:
    def send(w: EnrolWorld) -> Any:
        token = body.get("token", lambda w: w.good["token"])(w)
        csr = body.get("csr", lambda w: csr_for(new_key()))(w)
        return enrol(w.api, token, csr, **body.get("extra", {}))

    return Case(name, send, status, code, words)


ENROL_CASES = [
    _enrol_case("CSR is not PEM", 400, "csr_malformed", "PEM", csr=lambda w: "not a csr"),
    _enrol_case(
        "CSR is PEM garbage",
        400,
        "csr_malformed",
        "PEM",
        csr=lambda w: (
            "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n"
        ),
    ),
    _enrol_case("CSR with an RSA 2048 key", 400, "csr_key_type", "P-256", csr=lambda w: rsa_csr()),
    _enrol_case("CSR with an EC P-384 key", 400, "csr_key_type", "P-256", csr=lambda w: p384_csr()),
    _enrol_case(
        "CSR whose signature does not verify",
        400,
        "csr_signature",
        "signature",
        csr=lambda w: csr_with_bad_signature(),
    ),
    _enrol_case(
        "token with one secret character changed", 401, "token_invalid", token=EnrolWorld.tampered
    ),
    _enrol_case("token with an unknown kid", 401, "token_invalid", token=EnrolWorld.unknown_kid),
    _enrol_case("token of another controller", 401, "token_invalid", token=lambda w: w.foreign),
    _enrol_case("malformed token", 401, "token_invalid", "tokens create", token=lambda w: "efr.x"),
    _enrol_case(
        "revoked token",
        410,
        "token_revoked",
        "revoked",
        token=lambda w: w.revoked["token"],
    ),
    _enrol_case(
        "exhausted token",
        410,
        "token_exhausted",
        "1 of 1",
        token=lambda w: w.exhausted["token"],
    ),
    _enrol_case(
        "unknown top-level field", 422, "invalid_request", "hostname", extra={"hostname": "x"}
    ),
    _enrol_case(
        "unknown inventory field",
        422,
        "invalid_request",
        "inventory.colour",
        extra={"inventory": {"colour": "red"}},
    ),
    _enrol_case(
        "inventory field of the wrong type",
        422,
        "invalid_request",
        "inventory.cpu_count",
        extra={"inventory": {"cpu_count": "many"}},
    ),
    Case(
        "token of the wrong type",
        lambda w: w.api.call("POST", "/enrol", json={"token": 5, "csr": csr_for(new_key())}),
        422,
        "invalid_request",
        ("token",),
    ),
    Case(
        "body is not JSON",
        lambda w: w.api.call(
            "POST", "/enrol", content=b"{token:", headers={"content-type": "application/json"}
        ),
        422,
        "invalid_request",
    ),
]


def test_enrolment_refuses_bad_csrs_tokens_and_json_and_stores_nothing(
    api: Api, foreign_token: str
) -> None:
    world = EnrolWorld(api, foreign_token)
    check_all(api, world, ENROL_CASES)
    # The same world with a good token and CSR enrols: the refusals were for the reason named.
    assert enrol(api, world.good["token"]).status_code == 200


def _oversized(api: Api, target: str, chunked: bool) -> Any:
    """A request that would succeed but for its size: valid JSON padded with 70 KiB of
    whitespace, sent with a Content-Length or streamed without one."""
    api.site("shop-1")
    dev = api.device(api.token()["token"])
    if target == "enrol":
        url, headers = API + "/enrol", {"content-type": "application/json"}
        body: Json = {"token": api.token()["token"], "csr": csr_for(new_key())}
    else:
        url, headers = API + f"/devices/{dev.id}/status", dev.bearer
        body = {"health": {"ok": False}}
    raw = json.dumps(body).encode() + b" " * 70 * 1024
    content: Any = iter([raw[:1000], raw[1000:]]) if chunked else raw
    before = stored(api)
    r = api.client.post(url, content=content, headers=headers)
    assert stored(api) == before
    return r


@pytest.mark.parametrize(
    ("target", "chunked"),
    [
        pytest.param("enrol", False, id="enrol-content-length"),
        pytest.param("enrol", True, id="enrol-chunked"),
        pytest.param("status", False, id="status-content-length"),
        pytest.param("status", True, id="status-chunked"),
    ],
)
def test_body_over_64_kib_is_refused_413_and_stores_nothing(
    api: Api, target: str, chunked: bool
) -> None:
    r = _oversized(api, target, chunked)
    assert refusal(r, 413, "payload_too_large", "65536 bytes") is None, r.text


# -- device assertions at POST /auth/token -----------------------------------------------


class AssertionWorld:
    def __init__(self, api: Api) -> None:
        api.site("shop-1")
        tok = api.token()["token"]
        self.api = api
        self.me = api.device(tok)
        self.other = api.device(tok)
        self.gone = api.device(tok)
        api.ok("POST", f"/devices/{self.gone.id}/decommission", api.admin)
        waiting_key = new_key()
        held = api.enrol(api.token(require_approval=True)["token"], waiting_key)
        assert held.status_code == 202, held.text
        self.waiting = Device(held.json()["device_id"], waiting_key)

    def signed(self, key: Any = None, alg: str = "ES256", **overrides: Any) -> str:
        claims = assertion_claims(self.me.id, self.api.controller_id, **overrides)
        return jwt.encode(claims, key or self.me.key, algorithm=alg)


def _assertion_case(
    name: str, make: Callable[[AssertionWorld], str], status: int, code: str, *words: str
) -> Case:
    return Case(name, lambda w: exchange(w.api, make(w)), status, code, words)


ASSERTION_CASES = [
    _assertion_case(
        "signed by another device's key",
        lambda w: w.signed(key=w.other.key),
        401,
        "bad_signature",
    ),
    _assertion_case(
        "expired",
        lambda w: w.signed(iat=int(time.time()) - 400, exp=int(time.time()) - 340),
        401,
        "assertion_expired",
        "clock",
    ),
    _assertion_case(
        "for another audience",
        lambda w: w.signed(aud="edgefleet-someone-else"),
        401,
        "wrong_audience",
        "audience",
    ),
    _assertion_case(
        "living longer than 300 s",
        lambda w: w.signed(exp=int(time.time()) + 301),
        401,
        "invalid_assertion",
        "300",
    ),
    _assertion_case(
        "signed HS256",
        lambda w: w.signed(key=b"k" * 32, alg="HS256"),
        401,
        "invalid_assertion",
        "ES256",
    ),
    _assertion_case(
        "alg none",
        lambda w: unsigned_jwt(
            {"alg": "none", "typ": "JWT"}, assertion_claims(w.me.id, w.api.controller_id)
        ),
        401,
        "invalid_assertion",
        "ES256",
    ),
    _assertion_case(
        "of a decommissioned device",
        lambda w: w.api.assertion(w.gone),
        403,
        "device_decommissioned",
    ),
    _assertion_case(
        "of a device still awaiting approval",
        lambda w: w.api.assertion(w.waiting),
        403,
        "not_enrolled",
        "awaiting_approval",
    ),
    _assertion_case(
        "of a device never enrolled here",
        lambda w: jwt.encode(
            assertion_claims("dev-0000000000000000", w.api.controller_id), new_key(), "ES256"
        ),
        401,
        "unknown_device",
    ),
    _assertion_case("not a JWT", lambda w: "not-a-jwt", 401, "invalid_assertion"),
]


def test_token_endpoint_refuses_forged_stale_and_misaddressed_assertions(api: Api) -> None:
    world = AssertionWorld(api)
    check_all(api, world, ASSERTION_CASES)
    good = exchange(api, world.signed())
    assert good.status_code == 200, good.text


def test_replayed_assertion_is_refused_the_second_time(api: Api) -> None:
    world = AssertionWorld(api)
    once = api.assertion(world.me)
    assert exchange(api, once).status_code == 200
    before = stored(api)
    again = exchange(api, once)
    assert refusal(again, 401, "assertion_replayed", "jti") is None, again.text
    assert stored(api) == before


def test_unknown_fields_in_token_request_are_refused(api: Api) -> None:
    world = AssertionWorld(api)
    before = stored(api)
    body = {"client_assertion": api.assertion(world.me), "client_id": world.me.id}
    r = api.call("POST", "/auth/token", json=body)
    assert refusal(r, 422, "invalid_request", "client_id") is None, r.text
    assert stored(api) == before


# -- device access tokens ----------------------------------------------------------------


class AccessWorld(AssertionWorld):
    def __init__(self, api: Api) -> None:
        super().__init__(api)
        self.kid, self.key = access_key(api)


def _on_my_paths(
    name: str, token: Callable[[AccessWorld], str], status: int, code: str
) -> list[Case]:
    """The same bearer token on both device endpoints of ``me``."""

    def desired(w: AccessWorld) -> Any:
        return w.api.call("GET", f"/devices/{w.me.id}/desired", token(w))

    def status_(w: AccessWorld) -> Any:
        return w.api.call("POST", f"/devices/{w.me.id}/status", token(w), json={})

    return [
        Case(f"{name} (GET desired)", desired, status, code),
        Case(f"{name} (POST status)", status_, status, code),
    ]


ACCESS_CASES = [
    *_on_my_paths(
        "token signed with another HMAC key",
        lambda w: access_token(w.api, w.me.id, b"x" * 32, w.kid),
        401,
        "invalid_token",
    ),
    *_on_my_paths(
        "token with its signature altered",
        lambda w: alter_signature(w.me.access_token),
        401,
        "invalid_token",
    ),
    *_on_my_paths(
        "expired token",
        lambda w: access_token(
            w.api, w.me.id, w.key, w.kid, iat=int(time.time()) - 1000, exp=int(time.time()) - 10
        ),
        401,
        "token_expired",
    ),
    *_on_my_paths(
        "token with an unknown kid",
        lambda w: access_token(w.api, w.me.id, w.key, "deadbeef"),
        401,
        "invalid_token",
    ),
    *_on_my_paths("another device's token", lambda w: w.other.access_token, 403, "other_device"),
    *_on_my_paths("an operator API token", lambda w: w.api.admin, 401, "invalid_token"),
    *_on_my_paths(
        "an assertion instead of a token", lambda w: w.api.assertion(w.me), 401, "invalid_token"
    ),
    Case(
        "a device access token on the operator API",
        lambda w: w.api.call("GET", "/devices", w.me.access_token),
        401,
        "invalid_token",
    ),
]


def test_device_api_refuses_forged_expired_and_foreign_access_tokens(api: Api) -> None:
    world = AccessWorld(api)
    check_all(api, world, ACCESS_CASES)
    # A token made the same way with the controller's key and a live exp is accepted, so
    # the refusals above are for the forgery, expiry or owner, not the way they were made.
    crafted = access_token(api, world.me.id, world.key, world.kid)
    assert api.call("GET", f"/devices/{world.me.id}/desired", crafted).status_code == 200


def test_decommissioned_device_token_is_refused_at_once_even_from_cache(api: Api) -> None:
    world = AssertionWorld(api)
    dev = world.me
    first = api.call("GET", f"/devices/{dev.id}/desired", dev.access_token)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert (
        api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json={}).status_code == 200
    )
    api.ok("POST", f"/devices/{dev.id}/decommission", api.admin)
    before = stored(api)
    for name, r in [
        ("GET desired", api.call("GET", f"/devices/{dev.id}/desired", dev.access_token)),
        (
            "GET desired, If-None-Match",
            api.call(
                "GET",
                f"/devices/{dev.id}/desired",
                dev.access_token,
                headers={"if-none-match": etag},
            ),
        ),
        (
            "same status again",
            api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json={}),
        ),
        ("new assertion", exchange(api, api.assertion(dev))),
    ]:
        assert refusal(r, 403, "device_decommissioned", dev.id) is None, f"{name}: {r.text}"
    assert stored(api) == before


@pytest.fixture
def second_worker(api: Api) -> Iterator[Api]:
    """Another worker process's app over the same data dir and database."""
    app = create_app(api.client.app.state.rt.settings)  # type: ignore[attr-defined]
    with TestClient(app, base_url="https://testserver") as client:
        yield Api(client, api.admin, api.controller_id)
    app.state.rt.engine.dispose()


def test_decommission_on_one_worker_refuses_the_token_on_another_at_once(
    api: Api, second_worker: Api
) -> None:
    world = AssertionWorld(api)
    dev = world.me
    warm = second_worker.call("GET", f"/devices/{dev.id}/desired", dev.access_token)
    assert warm.status_code == 200  # the other worker now holds this device in its caches
    api.ok("POST", f"/devices/{dev.id}/decommission", api.admin)
    r = second_worker.call(
        "GET",
        f"/devices/{dev.id}/desired",
        dev.access_token,
        headers={"if-none-match": warm.headers["etag"]},
    )
    assert refusal(r, 403, "device_decommissioned") is None, r.text


def test_decommission_on_one_worker_refuses_new_assertions_on_another_at_once(
    api: Api, second_worker: Api
) -> None:
    world = AssertionWorld(api)
    dev = world.me
    second_worker.login(dev)  # the other worker now holds this device's credentials
    api.ok("POST", f"/devices/{dev.id}/decommission", api.admin)
    r = exchange(second_worker, second_worker.assertion(dev))
    assert refusal(r, 403, "device_decommissioned") is None, r.text


# -- the operator API --------------------------------------------------------------------


def test_token_creation_refuses_a_misspelt_restriction_instead_of_dropping_it(api: Api) -> None:
    api.site("shop-1")
    body = {"site": "shop-1", "requires_approval": True, "max_use": 1}
    r = api.call("POST", "/tokens", api.admin, json=body)
    assert refusal(r, 422, "invalid_request", "requires_approval") is None, r.text
    assert api.ok("GET", "/tokens", api.admin) == []
