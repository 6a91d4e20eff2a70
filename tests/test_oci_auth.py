"""Registry authentication in the OCI client: the challenge, the token realm, reuse.

The registry is the real docker-registry in token mode; the realm is a small HTTP server
in the test that checks Basic credentials and signs tokens with the controller's own
token signer, granting whatever scope is asked (what the controller grants is tested
in test_registry_tokens.py)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from edgefleet.controller.pki.registry_key import load_or_create_token_key
from edgefleet.controller.registry_tokens import RegistryTokens, parse_scopes
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.auth import Challenge, PasswordAuth, ScopedTokens, parse_challenge
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import RegistryAuthError
from edgefleet.oci.push import Blob, push
from edgefleet.oci.transport import Endpoint
from tests.support.registry import Registry, TokenAuth

SERVICE, ISSUER = "edgefleet-test-registry", "edgefleet-test-issuer"


class Realm:
    """``GET /token?service=&scope=`` with Basic alice:secret, or Bearer api-token."""

    def __init__(self, tokens: RegistryTokens) -> None:
        self.requests: list[dict[str, object]] = []
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                realm.requests.append({"auth": auth, "scope": query.get("scope", [])})
                good = {"Basic " + base64.b64encode(b"alice:secret").decode(), "Bearer api-token"}
                if auth not in good:
                    self._answer(401, {"error": {"code": "unauthorized", "message": "bad"}})
                    return
                token = tokens.issue("alice", parse_scopes(query.get("scope", [])))
                self._answer(200, {"access_token": token.token, "expires_in": 300})

            def _answer(self, status: int, doc: dict[str, object]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def realm(tmp_path: Path) -> Iterator[Realm]:
    key = load_or_create_token_key(tmp_path / "pki")
    r = Realm(RegistryTokens(key, ISSUER, SERVICE, 300))
    yield r
    r.server.shutdown()


@pytest.fixture
def registry(tmp_path: Path, realm: Realm) -> Iterator[Registry]:
    bundle = tmp_path / "pki" / "registry-token.pem"
    auth = TokenAuth(f"{realm.url}/token", SERVICE, ISSUER, bundle)
    with Registry(tmp_path / "reg", auth=auth) as reg:
        yield reg


def _push(client: RegistryClient, repo: str = "models/a") -> str:
    config = Blob.of_bytes(mt.OCI_EMPTY, b"{}")
    return push(client, repo, "v1", config, [Blob.of_bytes("text/plain", b"weights")])


def test_challenges_are_parsed_with_quoted_and_bare_values() -> None:
    header = (
        'Bearer realm="https://ctl:8443/api/v1/registry/token",service="registry",'
        'scope="repository:models/a:pull,push"'
    )
    assert parse_challenge(header) == Challenge(
        "bearer",
        "https://ctl:8443/api/v1/registry/token",
        "registry",
        "repository:models/a:pull,push",
    )
    assert parse_challenge('Basic realm="Registry Realm"') == Challenge("basic", "Registry Realm")
    with pytest.raises(RegistryAuthError, match="without a WWW-Authenticate challenge"):
        parse_challenge(None)


def _sorted_actions(scope: str) -> str:
    """``repository:NAME:push,pull`` as ``repository:NAME:pull,push``."""
    resource, actions = scope.rsplit(":", 1)
    return f"{resource}:{','.join(sorted(actions.split(',')))}"


def test_an_operator_pushes_with_a_token_fetched_once_per_scope(
    registry: Registry, realm: Realm
) -> None:
    auth = PasswordAuth("alice", "secret")
    with RegistryClient(Endpoint.parse(registry.host, plain_http=True), auth) as client:
        digest = _push(client)
        assert client.get_manifest("models/a", "v1").digest == digest
    # HEADs ask for pull, the upload for pull and push; every later call reuses that token.
    # The registry's challenge lists the actions in either order (a Go map).
    scopes = [[_sorted_actions(scope) for scope in r["scope"]] for r in realm.requests]
    assert scopes == [["repository:models/a:pull"], ["repository:models/a:pull,push"]]
    assert all(r["auth"].startswith("Basic ") for r in realm.requests)


def test_wrong_credentials_are_refused_with_what_to_check(registry: Registry) -> None:
    auth = PasswordAuth("alice", "wrong")
    with (
        RegistryClient(Endpoint.parse(registry.host, plain_http=True), auth) as client,
        pytest.raises(RegistryAuthError, match=r"refused the credentials .*API token"),
    ):
        _push(client)


def test_an_api_token_goes_only_to_the_controllers_realm(registry: Registry, realm: Realm) -> None:
    trusted = PasswordAuth(api_token="api-token", api_token_origin=realm.url)
    with RegistryClient(Endpoint.parse(registry.host, plain_http=True), trusted) as client:
        _push(client)
    assert {r["auth"] for r in realm.requests} == {"Bearer api-token"}

    realm.requests.clear()
    elsewhere = PasswordAuth(api_token="api-token", api_token_origin="https://controller.example")
    with (
        RegistryClient(Endpoint.parse(registry.host, plain_http=True), elsewhere) as client,
        pytest.raises(RegistryAuthError),
    ):
        _push(client, "models/b")
    assert {r["auth"] for r in realm.requests} == {""}


def test_a_device_gets_its_tokens_from_a_callable_per_scope(
    registry: Registry, tmp_path: Path
) -> None:
    with RegistryClient(
        Endpoint.parse(registry.host, plain_http=True), PasswordAuth("alice", "secret")
    ) as operator:
        digest = _push(operator)
    key = load_or_create_token_key(tmp_path / "pki")
    signer = RegistryTokens(key, ISSUER, SERVICE, 300)
    asked: list[str] = []

    def token(scope: str) -> str:
        asked.append(scope)
        return signer.issue("device:1", parse_scopes([scope])).token

    with RegistryClient(
        Endpoint.parse(registry.host, plain_http=True), ScopedTokens(token)
    ) as device:
        assert device.get_manifest("models/a", digest).digest == digest
        device.get_manifest("models/a", "v1")
    assert asked == ["repository:models/a:pull"]
