"""Registry tokens against the real registry: docker-registry (distribution 2.8) in token
mode, configured by ``edgefleet controller registry-config``, trusts only the
controller's token key. Clients fetch tokens from the in-process controller (the
standard flow: 401 challenge, token for its scope, retry with the bearer); the
registry alone decides what a token lets through."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from edgefleet.cli.app import app as cli_app
from edgefleet.controller.pki import certs
from edgefleet.controller.pki.registry_key import BUNDLE_FILE, KEY_FILE, libtrust_key_id
from edgefleet.controller.registry_tokens import Access
from edgefleet.controller.settings import Settings
from tests.support.apiclient import API, Api
from tests.support.registry import Registry, TokenAuth

if TYPE_CHECKING:
    from tests.support.apiclient import TestDevice

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TokenSource = Callable[[str, list[str]], str]
"""(service, scopes from the registry's challenge) -> bearer token."""


@pytest.fixture
def registry(settings: Settings, api: Api, tmp_path: Path) -> Iterator[Registry]:
    """The registry, configured with exactly what the CLI prints for this controller."""
    bundle = tmp_path / "registry-bundle.pem"
    out = CliRunner().invoke(
        cli_app,
        [
            "controller",
            "registry-config",
            "--data-dir",
            str(settings.data_dir),
            "--bundle",
            str(bundle),
        ],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    token = yaml.safe_load(out.output)["auth"]["token"]
    auth = TokenAuth(
        token["realm"], token["service"], token["issuer"], Path(token["rootcertbundle"])
    )
    with Registry(tmp_path / "registry", auth=auth) as running:
        yield running


class RegistryClient:
    """An OCI client in a few lines: every call answers the registry's challenge anew."""

    def __init__(self, registry: Registry, tokens: TokenSource) -> None:
        self.url = registry.url
        self.tokens = tokens

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        url = path if path.startswith("http") else self.url + path
        first = httpx.request(method, url, **kw)
        if first.status_code != 401:
            return first
        challenge = dict(re.findall(r'(\w+)="([^"]*)"', first.headers["www-authenticate"]))
        token = self.tokens(challenge["service"], challenge.get("scope", "").split())
        headers = {**kw.pop("headers", {}), "authorization": f"Bearer {token}"}
        return httpx.request(method, url, headers=headers, **kw)

    def upload(self, repo: str, blob: bytes) -> httpx.Response:
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        if started.status_code != 202:
            return started
        location = started.headers["location"]
        sep = "&" if "?" in location else "?"
        return self.request(
            "PUT",
            f"{location}{sep}digest={_digest(blob)}",
            content=blob,
            headers={"content-type": "application/octet-stream"},
        )

    def push(self, repo: str, data: bytes) -> httpx.Response:
        """Config, one layer and the manifest tagged v1; the last answer (201 when stored)."""
        config = b"{}"
        for blob in (config, data):
            r = self.upload(repo, blob)
            if r.status_code != 201:
                return r
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": _descriptor("application/vnd.oci.empty.v1+json", config),
                "layers": [_descriptor("application/octet-stream", data)],
            }
        ).encode()
        return self.request(
            "PUT", f"/v2/{repo}/manifests/v1", content=manifest, headers={"content-type": MANIFEST}
        )

    def pull(self, repo: str, digest: str) -> httpx.Response:
        return self.request("GET", f"/v2/{repo}/manifests/{digest}", headers={"accept": MANIFEST})


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(blob), "size": len(blob)}


def operator_tokens(api: Api, username: str, api_token: str) -> TokenSource:
    def fetch(service: str, scopes: list[str]) -> str:
        r = api.client.get(
            f"{API}/registry/token",
            params={"service": service, "scope": scopes},
            auth=(username, api_token),
        )
        assert r.status_code == 200, r.text
        return r.json()["token"]

    return fetch


def device_tokens(api: Api, device: TestDevice) -> TokenSource:
    def fetch(service: str, scopes: list[str]) -> str:
        r = api.client.get(
            f"{API}/devices/{device.id}/registry-token",
            params={"service": service, "scope": scopes},
            headers=device.bearer,
        )
        assert r.status_code == 200, r.text
        return r.json()["token"]

    return fetch


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "accept": MANIFEST}


def _access(token: str) -> list[dict[str, Any]]:
    return jwt.decode(token, options={"verify_signature": False})["access"]


def _pushed(api: Api, registry: Registry, repo: str) -> str:
    """A manifest the admin pushed; its digest."""
    r = RegistryClient(registry, operator_tokens(api, "admin", api.admin)).push(
        repo, os.urandom(64)
    )
    assert r.status_code == 201, r.text
    return r.headers["docker-content-digest"]


def test_operator_pushes_with_own_credentials_and_viewer_only_pulls(
    api: Api, registry: Registry
) -> None:
    operator = RegistryClient(registry, operator_tokens(api, "op", api.user("op", "operator")))
    r = operator.push("models/detector", b"weights")
    assert r.status_code == 201, r.text
    digest = r.headers["docker-content-digest"]

    viewer_token = api.user("view", "viewer")
    viewer = RegistryClient(registry, operator_tokens(api, "view", viewer_token))
    assert viewer.pull("models/detector", digest).status_code == 200
    assert viewer.push("models/detector", b"other weights").status_code == 401
    granted = operator_tokens(api, "view", viewer_token)(
        "edgefleet-registry", ["repository:models/detector:pull,push"]
    )
    assert _access(granted) == [
        {"type": "repository", "name": "models/detector", "actions": ["pull"]}
    ]

    audit = api.ok("GET", "/audit", api.admin)
    writes = [a for a in audit if a["action"] == "registry.write"]
    assert {(a["actor"], a["target"]) for a in writes} == {("op", "models/detector")}


def test_device_pulls_only_the_repositories_of_its_desired_state(
    api: Api, registry: Registry
) -> None:
    mine = _pushed(api, registry, "models/mine")
    theirs = _pushed(api, registry, "models/theirs")
    reference = f"{registry.host}/models/mine@{mine}"
    api.profile("shop", {"models": [{"name": "mine", "reference": reference}]})
    api.site()
    device = api.device(api.token()["token"])
    api.ok("POST", f"/devices/{device.id}/assign", api.admin, json={"profile": "shop"})

    client = RegistryClient(registry, device_tokens(api, device))
    assert client.pull("models/mine", mine).status_code == 200
    assert client.pull("models/theirs", theirs).status_code in (401, 403)
    assert client.push("models/mine", b"tampered").status_code in (401, 403)

    r = api.client.get(f"{API}/devices/{device.id}/registry-token", headers=device.bearer)
    body = r.json()
    assert body["expires_in"] == 300
    assert body["access_token"] == body["token"]
    assert _access(body["token"]) == [
        {"type": "repository", "name": "models/mine", "actions": ["pull"]}
    ]


def test_device_without_models_gets_a_token_that_grants_nothing(
    api: Api, registry: Registry
) -> None:
    digest = _pushed(api, registry, "models/any")
    api.site()
    device = api.device(api.token()["token"])
    client = RegistryClient(registry, device_tokens(api, device))
    assert client.pull("models/any", digest).status_code == 401
    r = api.client.get(f"{API}/devices/{device.id}/registry-token", headers=device.bearer)
    assert _access(r.json()["token"]) == []


def test_registry_refuses_an_expired_token(api: Api, registry: Registry) -> None:
    digest = _pushed(api, registry, "models/old")
    tokens = api.client.app.state.rt.registry_tokens  # type: ignore[attr-defined]
    pull = [Access("repository", "models/old", frozenset({"pull"}))]
    url = f"{registry.url}/v2/models/old/manifests/{digest}"

    def status(token: str) -> int:
        return httpx.get(url, headers=_bearer(token)).status_code

    # An hour old: beyond the lifetime and distribution's 60 s leeway.
    assert status(tokens.issue("admin", pull, now=time.time() - 3600).token) == 401
    assert status(tokens.issue("admin", pull).token) == 200


def test_registry_refuses_tokens_signed_by_any_key_but_the_token_key(
    api: Api, registry: Registry, settings: Settings
) -> None:
    """Neither a device key (on its own, or with its certificate chain up to the fleet
    root) nor the fleet root's own key can sign tokens: the bundle holds neither."""
    digest = _pushed(api, registry, "models/guarded")
    api.site()
    device = api.device(api.token()["token"])
    genuine = operator_tokens(api, "admin", api.admin)(
        "edgefleet-registry", ["repository:models/guarded:pull"]
    )
    claims = jwt.decode(genuine, options={"verify_signature": False})
    pki = settings.data_dir / "pki"
    root_key = certs.read_key(pki / "root.key")
    root = x509.load_pem_x509_certificate((pki / "root.pem").read_bytes())
    chain = x509.load_pem_x509_certificates(device.response["certificate_chain"].encode())

    def x5c(*certificates: x509.Certificate) -> list[str]:
        der = (c.public_bytes(serialization.Encoding.DER) for c in certificates)
        return [base64.b64encode(d).decode() for d in der]

    forged = {
        "device key, its own kid": (device.key, {"kid": libtrust_key_id(device.key.public_key())}),
        "device key, chain to the root": (device.key, {"x5c": x5c(*chain, root)}),
        "root key, its own kid": (root_key, {"kid": libtrust_key_id(root_key.public_key())}),
        "root key, root certificate": (root_key, {"x5c": x5c(root)}),
    }
    url = f"{registry.url}/v2/models/guarded/manifests/{digest}"

    def status(token: str) -> int:
        return httpx.get(url, headers=_bearer(token)).status_code

    assert status(genuine) == 200
    refused = {
        name: status(jwt.encode(claims, key, algorithm="ES256", headers=headers))
        for name, (key, headers) in forged.items()
    }
    assert refused == dict.fromkeys(forged, 401)


def test_bad_credentials_get_401_with_a_basic_challenge(api: Api) -> None:
    viewer = api.user("view", "viewer")
    api.user("gone", "viewer")
    gone = api.user("gone2", "viewer")
    api.ok("POST", "/users/gone2/disable", api.admin)
    path = f"{API}/registry/token"
    for auth in (
        None,
        ("view", "efo.000000000000.not-the-secret-but-long-enough-000000"),
        ("view", viewer[:-2] + "xx"),
        ("gone", viewer),  # someone else's token
        ("gone2", gone),  # a disabled user
    ):
        r = api.client.get(path, params={"scope": "repository:m:pull"}, auth=auth)
        assert r.status_code == 401, (auth, r.text)
        assert r.headers["www-authenticate"].startswith("Basic ")
        assert r.json()["error"]["message"]
    garbled = api.client.get(path, headers={"authorization": "Basic %%%"})
    assert garbled.status_code == 401


def test_token_requests_refuse_other_services_malformed_scopes_and_installers(
    api: Api,
) -> None:
    path = f"{API}/registry/token"
    other = api.client.get(path, params={"service": "another-registry"}, auth=("admin", api.admin))
    assert other.status_code == 400
    assert "edgefleet-registry" in other.json()["error"]["message"]
    for scope in ("repository:pull", "repository:Models/X:pull", "repository:h:5000/x:pull"):
        r = api.client.get(path, params={"scope": scope}, auth=("admin", api.admin))
        assert r.status_code == 400, (scope, r.text)
    api.site()
    installer = api.user("inst", "installer", site="shop-1")
    assert api.client.get(path, auth=("inst", installer)).status_code == 403


def test_registry_config_names_only_the_token_certificate(
    settings: Settings, api: Api, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    out = CliRunner().invoke(
        cli_app,
        [
            "controller",
            "registry-config",
            "--data-dir",
            str(settings.data_dir),
            "--bundle",
            str(bundle),
        ],
    )
    assert out.exit_code == 0, out.output
    token = yaml.safe_load(out.output)["auth"]["token"]
    assert token["realm"].endswith("/api/v1/registry/token")
    assert (token["service"], token["issuer"]) == ("edgefleet-registry", "edgefleet")
    certificates = x509.load_pem_x509_certificates(bundle.read_bytes())
    assert len(certificates) == 1
    pki = settings.data_dir / "pki"
    assert bundle.read_bytes() == (pki / BUNDLE_FILE).read_bytes()
    assert certificates[0] != x509.load_pem_x509_certificate((pki / "root.pem").read_bytes())
    constraints = certificates[0].extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False
    assert stat.S_IMODE(os.stat(pki / KEY_FILE).st_mode) == 0o600
