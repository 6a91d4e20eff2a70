"""The controller's device door under Hypothesis: enrolment (CSRs), QR claims, the
assertion exchange (device JWTs) and result batches (JSON, gzip), each sent through
the real app. Whatever the body, the answer is a success or a 4xx whose body is
``{"error": {"code", "message"}}``, never a 500; and a refusal stores nothing.

One controller (SQLite, rate limits off so that every input reaches its parser) serves
every example of a module: setting one up costs more than a hundred examples.
``tests/test_hostile_input.py`` holds the named cases; this file tries what nobody
thought of. A 1 GB gzip bomb is refused in bounded time and memory at the end.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import text

from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.services import results
from edgefleet.controller.settings import load_settings
from edgefleet.wire import MAX_BATCH_BYTES
from tests.fuzz_settings import tried
from tests.support.apiclient import Api, TestDevice, csr_for, new_key
from tests.test_parsers_property import (
    JSON_VALUES,
    mutated,
    with_field,
)

Json = dict[str, Any]
_JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, TestDevice, str]]:
    """The app, an enrolled device and a registration token for more."""
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("door") / "controller",
        enrol_rate_per_second=0,
        token_rate_per_second=0,
        claim_rate_per_second=0,
    )
    prepared = prepare(settings)
    app = create_app(settings)
    with TestClient(app, base_url="https://testserver") as client:
        assert prepared.new_admin_token is not None
        api = Api(client, prepared.new_admin_token, prepared.controller_id)
        api.site("shop-1")
        token = api.token(site="shop-1")["token"]
        yield api, api.device(token), token
    app.state.rt.engine.dispose()


def stored(api: Api) -> dict[str, int]:
    """What a refused device request must leave as it was."""
    tables = ("device", "claim", "usedassertion", "result", "resultgap", "resultconflict")
    with api.client.app.state.rt.engine.connect() as conn:  # type: ignore[attr-defined]
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}
        counts["token uses"] = conn.execute(
            text("SELECT coalesce(sum(uses), 0) FROM registrationtoken")
        ).scalar_one()
    return counts


def post_json(api: Api, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    """As a device sends it: JSON text (lone surrogates escaped, NaN as Python writes it)."""
    return api.call("POST", path, content=json.dumps(body), headers={**_JSON, **(headers or {})})


def answered_properly(api: Api, send: Any) -> Any:
    """Send; a 4xx carries the error body and changed nothing; a 5xx is a bug."""
    before = stored(api)
    r = send()
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] and error["message"], r.text
        after = stored(api)
        assert after == before, f"refused ({r.status_code}), yet stored: {before} -> {after}"
    return r


# -- enrolment and claims: the CSR and the rest of the body -------------------------------

_CSR = csr_for(new_key())
_CSR_TEXT = st.text(max_size=200) | mutated(_CSR.encode()).map(
    lambda b: b.decode("utf-8", "replace")
)


@given(
    st.fixed_dictionaries({"csr": _CSR_TEXT})
    | st.fixed_dictionaries({"csr": _CSR_TEXT, "inventory": JSON_VALUES})
    | with_field({"csr": _CSR, "inventory": {"serial": "S1", "hostname": "till"}})
)
@example({"csr": "\ud800"})
def test_enrolment_answers_every_body_without_a_500(
    door: tuple[Api, TestDevice, str], body: Json
) -> None:
    tried("enrolment request")
    api, _, token = door
    answered_properly(api, lambda: post_json(api, "/enrol", {"token": token, **body}))


@given(
    st.fixed_dictionaries({"csr": _CSR_TEXT})
    | with_field({"csr": _CSR, "inventory": {"serial": "S1", "hardware_id": "hw"}})
    | JSON_VALUES
)
def test_claim_requests_get_a_claim_or_a_4xx(door: tuple[Api, TestDevice, str], body: Any) -> None:
    tried("claim request")
    api, _, _ = door
    answered_properly(api, lambda: post_json(api, "/claims", body))


def test_a_raw_body_that_is_not_json_is_a_400(door: tuple[Api, TestDevice, str]) -> None:
    api, _, _ = door
    for body in (b"\xff\xfe", b"[" * 50_000, b'{"csr": "x"'):
        for path in ("/enrol", "/claims", "/auth/token"):
            r = answered_properly(
                api,
                lambda: api.call("POST", path, content=body, headers=_JSON),  # noqa: B023
            )
            assert r.status_code in (400, 422), (path, r.text)


# -- device assertions (the JWT exchanged for an access token) ---------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def _assertions(draw: st.DrawFn, api: Api, device: TestDevice) -> str:
    """A real assertion broken in one part, or three parts of anything."""
    good = api.assertion(device)
    head, claims, sig = good.split(".")
    kind = draw(st.sampled_from(["header", "claims", "signature", "bytes", "parts"]))
    if kind == "header":
        head = _b64(json.dumps(draw(JSON_VALUES)).encode())
    elif kind == "claims":
        doc = json.loads(base64.urlsafe_b64decode(claims + "=="))
        claims = _b64(json.dumps(draw(with_field(doc))).encode())
    elif kind == "signature":
        sig = _b64(draw(mutated(base64.urlsafe_b64decode(sig + "=="))))
    elif kind == "bytes":
        return draw(mutated(good.encode())).decode("utf-8", "replace")
    else:
        return ".".join(draw(st.lists(st.text(max_size=40), min_size=1, max_size=4)))
    return f"{head}.{claims}.{sig}"


@given(st.data())
def test_assertion_exchange_answers_a_token_or_a_4xx(
    door: tuple[Api, TestDevice, str], data: st.DataObject
) -> None:
    tried("device assertion (JWT)")
    api, device, _ = door
    assertion = data.draw(_assertions(api, device))
    body = data.draw(
        st.just({"client_assertion": assertion})
        | with_field({"client_assertion": assertion, "grant_type": "client_credentials"})
    )
    r = answered_properly(api, lambda: post_json(api, "/auth/token", body))
    if r.status_code == 200:
        assert r.json()["access_token"]


_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300)


@given(st.data())
def test_any_authorization_header_is_a_token_or_a_401(
    door: tuple[Api, TestDevice, str], data: st.DataObject
) -> None:
    tried("access token / Authorization header")
    api, device, _ = door
    token = device.access_token
    value = data.draw(
        _HEADER_TEXT
        | _HEADER_TEXT.map(lambda t: "Bearer " + t)
        | mutated(token.encode()).map(lambda b: "Bearer " + b.decode("ascii", "replace"))
        | _HEADER_TEXT.map(lambda t: "Claim " + t)
    )
    path = data.draw(
        st.sampled_from([f"/devices/{device.id}/desired", "/devices", "/claims/x/poll"])
    )
    r = api.call("GET", path, headers={"authorization": value.replace("\ufffd", "?")})
    assert r.status_code in (200, 401, 403, 404), f"{r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        assert r.json()["error"]["code"]
    if r.status_code == 200:
        sent = value.partition(" ")[2].strip()
        assert "desired" in path and _same_jwt(sent, token), f"a broken token let in: {value}"


def _same_jwt(a: str, b: str) -> bool:
    """Equal once decoded: base64's unused low bits in a segment's last character may
    differ (every base64 decoder ignores them), which changes the text, not the token."""
    try:
        return [base64.urlsafe_b64decode(p + "==") for p in a.split(".")] == [
            base64.urlsafe_b64decode(p + "==") for p in b.split(".")
        ]
    except ValueError:
        return False


# -- result batches ----------------------------------------------------------------------

_RECORD = {"seq": 1, "wall": 1.9e9, "mono": 5.0, "payload": '{"y": 1}'}
_BATCH = {"epoch": "00000000000000ab", "wall": 1.9e9, "mono": 6.0, "records": [_RECORD]}


@st.composite
def _batches(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["field", "record", "skipped", "bytes"]))
    if kind == "field":
        doc: Any = draw(with_field(_BATCH))
    elif kind == "record":
        doc = {**_BATCH, "records": [draw(with_field(_RECORD) | JSON_VALUES)]}
    elif kind == "skipped":
        gap = {"first": 1, "last": 2, "reason": "evicted"}
        doc = {**_BATCH, "records": [], "skipped": [draw(with_field(gap))]}
    else:
        return draw(mutated(json.dumps(_BATCH).encode()) | st.binary(max_size=200))
    return json.dumps(doc).encode()


def _one_record(**fields: Any) -> bytes:
    return json.dumps({**_BATCH, "records": [{**_RECORD, **fields}]}).encode()


@given(_batches(), st.booleans())
@example(_one_record(seq=2**70), False)
@example(_one_record(revision=2**64), False)
@example(_one_record(payload="[" * 400 + "]" * 400), False)
@example(_one_record(payload="[" * 5000), True)
def test_result_batches_are_stored_or_refused_whole(
    door: tuple[Api, TestDevice, str], body: bytes, gzipped: bool
) -> None:
    tried("result batch")
    api, device, _ = door
    headers = {**device.bearer, **_JSON}
    if gzipped:
        body, headers = gzip.compress(body), {**headers, "content-encoding": "gzip"}
    r = answered_properly(
        api,
        lambda: api.call("POST", f"/devices/{device.id}/results", content=body, headers=headers),
    )
    if r.status_code == 200:
        assert r.json()["acked"] >= 0
        listed = api.call("GET", f"/results?device={device.id}&newest=true&limit=5", api.admin)
        assert listed.status_code == 200, f"a stored batch broke the listing: {listed.text[:300]}"


def test_a_payload_nested_past_the_limit_is_refused_so_listings_keep_working(
    door: tuple[Api, TestDevice, str],
) -> None:
    """Stored, it would have made every listing that includes it a 500."""
    api, device, _ = door
    limit = results.MAX_PAYLOAD_DEPTH
    headers = {**device.bearer, **_JSON}
    path = f"/devices/{device.id}/results"
    seq = api.ok("GET", f"/results?device={device.id}&newest=true&limit=1", api.admin)
    first = max([r["seq"] for r in seq["results"]], default=0) + 1000
    too_deep = {**_RECORD, "seq": first, "payload": "[" * (limit + 1) + "]" * (limit + 1)}
    body = {**_BATCH, "epoch": "00000000000000cd", "records": [too_deep]}
    r = answered_properly(api, lambda: post_json(api, path, body, headers))
    assert r.status_code == 400 and "nested more than 64 levels" in r.json()["error"]["message"]
    deepest = {**too_deep, "seq": 1, "payload": "[" * limit + "]" * limit}
    body = {**body, "records": [deepest]}
    assert answered_properly(api, lambda: post_json(api, path, body, headers)).status_code == 200
    listed = api.ok("GET", f"/results?device={device.id}&newest=true&limit=5", api.admin)
    assert any(r["epoch"] == "00000000000000cd" for r in listed["results"])


@given(mutated(gzip.compress(json.dumps(_BATCH).encode())))
def test_broken_gzip_is_a_400_and_stores_nothing(
    door: tuple[Api, TestDevice, str], body: bytes
) -> None:
    tried("result batch (gzip)")
    api, device, _ = door
    headers = {**device.bearer, **_JSON, "content-encoding": "gzip"}
    answered_properly(
        api,
        lambda: api.call("POST", f"/devices/{device.id}/results", content=body, headers=headers),
    )


@pytest.fixture(scope="module")
def gigabyte_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """1 GiB of spaces after a batch's opening brace, gzipped: about 1 MiB on the wire,
    under the 2 MiB cap on result bodies, so it reaches the decompressor."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1 << 20)
    parts = [packer.compress(b"{")]
    parts += [packer.compress(chunk) for _ in range(1024)]
    parts.append(packer.flush())
    return b"".join(parts)


def test_a_one_gigabyte_gzip_bomb_is_refused_fast_in_bounded_memory(
    door: tuple[Api, TestDevice, str], gigabyte_bomb: bytes
) -> None:
    api, device, _ = door
    assert len(gigabyte_bomb) < 2 * 1024 * 1024
    headers = {**device.bearer, **_JSON, "content-encoding": "gzip"}
    before = stored(api)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        r = api.call(
            "POST", f"/devices/{device.id}/results", content=gigabyte_bomb, headers=headers
        )
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    assert stored(api) == before
    # Inflating stops one byte past the 4 MiB limit: a few times that, not 1 GiB.
    assert peak < 8 * MAX_BATCH_BYTES, f"peak {peak / 2**20:.0f} MiB"
    assert took < 2.0, f"took {took:.2f} s"


def test_bomb_fixture_really_is_a_gigabyte(gigabyte_bomb: bytes) -> None:
    """The bomb inflates to 1 GiB + 1 byte (counted in 1 MiB steps, never held whole)."""
    inflater = zlib.decompressobj(31)
    total, data = 0, gigabyte_bomb
    while data:
        total += len(inflater.decompress(data, 1 << 20))
        data = inflater.unconsumed_tail
    assert total == (1 << 30) + 1
