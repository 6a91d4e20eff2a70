"""Parsers of untrusted input under Hypothesis: whatever the input, each gives either a
parsed value or Edgefleet's own error (a subclass of ``EdgefleetError`` whose message
says what to fix), never another exception.

The inputs are of two kinds: anything at all (text, bytes, JSON values), and a valid
document broken a little (a byte flipped, a field dropped or replaced), which reaches
further into a parser than noise does. ``HYPOTHESIS_PROFILE=fuzz`` (``make fuzz``)
tries many more of each. The parsers behind the controller's device door (CSRs at
enrolment and claims, device assertions, result batches) are tried through the API
in ``tests/test_device_door_property.py``, where "nothing stored" can be checked too.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgefleet import profilespec, safeyaml
from edgefleet.agent.qrpayload import registration_from_payload
from edgefleet.agent.registration import parse_registration
from edgefleet.controller.pki.authority import parse_device_csr
from edgefleet.enrolcode import build_payload, parse_payload
from edgefleet.errors import ApiError, ConfigError, EdgefleetError
from edgefleet.models.artifact import describe
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.manifest import Manifest
from tests.fuzz_settings import tried
from tests.support.apiclient import Api, csr_for, new_key

PIN = "sha256:" + "ab" * 32
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=30,
)


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a few bytes replaced, removed or inserted, or cut short."""

    @st.composite
    def edit(draw: st.DrawFn) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            if not out:
                break
            at = draw(st.integers(0, len(out) - 1))
            how = draw(st.sampled_from(["flip", "drop", "insert", "cut"]))
            if how == "flip":
                out[at] ^= draw(st.integers(1, 255))
            elif how == "drop":
                del out[at]
            elif how == "insert":
                out[at:at] = draw(st.binary(min_size=1, max_size=8))
            else:
                del out[at:]
        return bytes(out)

    return edit()


def with_field(doc: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``doc`` with one field dropped, or replaced by any JSON value, or one added."""
    keys = sorted(doc)
    dropped = st.sampled_from(keys).map(lambda k: {x: v for x, v in doc.items() if x != k})
    replaced = st.tuples(st.sampled_from([*keys, "extra"]), JSON_VALUES).map(
        lambda kv: {**doc, kv[0]: kv[1]}
    )
    return dropped | replaced


def refused_properly(exc: EdgefleetError) -> None:
    assert exc.code and exc.message, f"an error with no code or message: {exc!r}"


# -- CSRs (enrolment, claims, renewal) --------------------------------------------------

_CSR = csr_for(new_key())
_CSR_DER = base64.b64decode("".join(_CSR.strip().splitlines()[1:-1]))


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


@given(
    st.text(max_size=300)
    | mutated(_CSR.encode()).map(lambda b: b.decode("utf-8", "surrogateescape"))
    | mutated(_CSR_DER).map(_pem)
)
@example("\ud800")
@example(_pem(b"\x30\x00"))
def test_csr_parser_gives_a_request_or_a_400(text: str) -> None:
    tried("CSR")
    try:
        csr, pin = parse_device_csr(text)
    except ApiError as exc:
        assert exc.status == 400
        refused_properly(exc)
    else:
        assert pin.startswith("sha256:") and csr.is_signature_valid


def _broken(how: str) -> str:
    """The valid CSR with one thing broken: its curve's OID (P-256 ...3.1.7 -> ...3.1.8),
    its point (a byte of x changed: off the curve) or its version (0 -> 10)."""
    oid = bytes.fromhex("06082a8648ce3d030107")
    der = bytearray(_CSR_DER)
    if how == "curve":
        der[_CSR_DER.index(oid) + len(oid) - 1] = 8
    elif how == "point":
        der[_CSR_DER.index(bytes.fromhex("034200")) + 9] ^= 0x01
    else:
        der[_CSR_DER.index(bytes.fromhex("020100")) + 2] = 10
    return _pem(bytes(der))


@pytest.mark.parametrize("how", ["curve", "point", "version"])
def test_a_broken_csr_is_a_400(how: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_device_csr(_broken(how))
    assert refused.value.status == 400


# -- the registration file flashed into an image ------------------------------------------

_REGISTRATION = {
    "controller_url": "https://fleet.example.com:8443",
    "controller_id": "ctl-1",
    "root_pins": [PIN],
    "token": "efr.kid.secret",
}
_REGISTRATION_YAML = "".join(f"{k}: {json.dumps(v)}\n" for k, v in _REGISTRATION.items()).encode()


@given(
    st.text(max_size=300)
    | mutated(_REGISTRATION_YAML).map(lambda b: b.decode("utf-8", "replace"))
    | with_field(_REGISTRATION).map(json.dumps)
)
@example("a: &a [1]\nb: *a\n")
@example("[" * 5000)
@example("controller_url: 2001-13-45\n")
def test_registration_file_gives_a_registration_or_a_config_error(text: str) -> None:
    tried("registration file")
    try:
        reg = parse_registration(text, "reg.yaml")
    except ConfigError as exc:
        refused_properly(exc)
        assert "reg.yaml" in exc.message
    else:
        assert reg.controller_url.startswith("https://") and reg.root_pins


# -- QR payloads -------------------------------------------------------------------------

_PAYLOAD = build_payload(
    "https://fleet.example.com:8443", "7KQ2M9XD4T", [PIN, "sha256:" + "cd" * 32]
)
_PAYLOAD_ALPHABET = st.sampled_from(sorted(set(_PAYLOAD) | set("#./:%?@[]=-_ \u00e9\u0130")))


@given(
    st.text(max_size=200)
    | st.text(_PAYLOAD_ALPHABET, max_size=200)
    | mutated(_PAYLOAD.encode()).map(lambda b: b.decode("utf-8", "replace"))
)
@example("HTTPS://[::1/E/7KQ2M9XD4T#" + "A" * 52)
@example("https://:7KQ2M9XD4T#0")
@example("HTTPS://FLEET.EXAMPLE.COM/" + "P" * 300 + "/E/7KQ2M9XD4T#" + "A" * 52)
def test_qr_payload_gives_a_registration_or_a_config_error(tmp_path: Path, text: str) -> None:
    tried("QR payload")
    try:
        parsed = parse_payload(text)
        reg = registration_from_payload(text, tmp_path)
    except ConfigError as exc:
        refused_properly(exc)
        if "7KQ2M9XD4T" not in text.partition("#")[2]:  # pins may be quoted, the code never
            assert "7KQ2M9XD4T" not in exc.message, "the code is the secret part: never echoed"
    else:
        assert reg.controller_url == parsed.controller_url.rstrip("/")
        assert reg.root_pins and all(p.startswith("sha256:") for p in reg.root_pins)


# -- profile YAML (and every other YAML read from outside) ------------------------------

_PROFILE_YAML = (
    b"name: retail\nmode: direct\nmodels:\n  - name: m\n    reference: "
    b"registry.example.com/m@sha256:" + b"0" * 64 + b"\nconfig:\n  camera: [front, back]\n"
)


@given(st.text(max_size=300) | mutated(_PROFILE_YAML).map(lambda b: b.decode("utf-8", "replace")))
@example("0x" + "f" * 5000)
@example("when: 2026-02-30\n")
def test_yaml_gives_a_value_or_a_config_error(text: str) -> None:
    tried("profile YAML")
    try:
        safeyaml.load(text, "the profile")
    except ConfigError as exc:
        refused_properly(exc)
        assert exc.message.startswith("the profile")


LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def test_billion_laughs_is_refused_at_once_naming_the_alias() -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"line 2: YAML aliases \(\*a\) are refused"):
        safeyaml.load(LAUGHS, "the profile")
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[" * 100_000, "nest"),  # libyaml refuses first, past 1,000 levels
        ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 40)), "nested more than 32"),
        ("{" * 40 + "}" * 40, "nested more than 32 levels deep"),
    ],
)
def test_deep_nesting_is_refused_with_its_line(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        safeyaml.load(text, "the profile")


def test_a_profile_within_the_limits_still_loads() -> None:
    doc = safeyaml.load(_PROFILE_YAML.decode(), "the profile")
    assert doc["config"] == {"camera": ["front", "back"]}
    nested = "".join("  " * i + f"k{i}:\n" for i in range(31)) + "  " * 31 + "leaf: 1\n"
    assert safeyaml.load(nested, "the profile")["k0"]["k1"]


@given(JSON_VALUES | st.recursive(JSON_VALUES, lambda inner: st.dictionaries(st.text(), inner)))
def test_profile_validation_gives_a_list_of_problems_for_any_document(doc: Any) -> None:
    tried("profile document")
    problems = profilespec.errors(doc)
    assert all(isinstance(p, str) and isinstance(r, str) for p, r in problems)


def test_a_profile_nested_too_deep_is_refused_by_the_api_and_not_stored(api: Api) -> None:
    """Nesting that JSON carries but YAML rendering cannot (a GET of it was a 500)."""
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    r = api.call("POST", "/profiles", api.admin, json={"name": "deep", "spec": {"config": deep}})
    assert r.status_code == 422, r.text
    assert "nested more than 32 levels deep" in r.json()["error"]["message"]
    assert api.call("GET", "/profiles/deep", api.admin).status_code == 404
    fine: Any = 1
    for _ in range(profilespec.MAX_DEPTH - 2):
        fine = {"a": fine}
    api.profile("fine", {"config": fine})
    assert api.ok("GET", "/profiles/fine", api.admin)["spec"]["config"]["a"]


# -- OCI manifests (the agent's puller, the CLI's models commands) ----------------------


def _descriptor(media_type: str, title: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"mediaType": media_type, "digest": "sha256:" + "1" * 64, "size": 3}
    if title:
        doc["annotations"] = {mt.ANNOTATION_TITLE: title}
    return doc


_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "artifactType": mt.MODEL_ARTIFACT,
    "config": _descriptor(mt.MODEL_CONFIG),
    "layers": [_descriptor(mt.MODEL_WEIGHT_RAW, "model.onnx"), _descriptor(mt.EDGEFLEET_PROBE)],
    "annotations": {mt.ANNOTATION_NAME: "m", mt.ANNOTATION_VERSION: "1"},
}
_MANIFEST_BYTES = json.dumps(_MANIFEST).encode()


@st.composite
def _broken_layer(draw: st.DrawFn) -> dict[str, Any]:
    layers = list(_MANIFEST["layers"])
    at = draw(st.integers(0, len(layers) - 1))
    layers[at] = draw(with_field(layers[at]) | JSON_VALUES)
    return {**_MANIFEST, "layers": layers}


@given(
    st.binary(max_size=300)
    | mutated(_MANIFEST_BYTES)
    | with_field(_MANIFEST).map(lambda d: json.dumps(d).encode())
    | _broken_layer().map(lambda d: json.dumps(d).encode())
)
@example(b"[" * 100_000)
@example(json.dumps({**_MANIFEST, "annotations": [1]}).encode())
@example(json.dumps({**_MANIFEST, "annotations": {mt.ANNOTATION_SIGNATURE: "{"}}).encode())
def test_oci_manifest_gives_a_model_or_an_oci_error(data: bytes) -> None:
    tried("OCI manifest")
    try:
        found = describe(Manifest.from_bytes(data))
    except EdgefleetError as exc:
        refused_properly(exc)
    else:
        assert found.model.digest.startswith("sha256:") and found.model.size >= 0
