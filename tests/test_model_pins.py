"""A profile may name a model by tag: the apply resolves it against the real registry and
the revision stores the digest, so devices run the bytes the tag named at that moment."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from edgefleet.controller.app import create_app
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.settings import load_settings
from tests.support.apiclient import Api
from tests.support.registry import Registry, free_port

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push(registry: Registry, repo: str, tag: str, payload: bytes) -> str:
    """A minimal artifact (empty config, one layer) under ``tag``; its manifest digest."""
    config = b"{}"
    for blob in (config, payload):
        start = httpx.post(f"{registry.url}/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["location"]
        url = location if location.startswith("http") else registry.url + location
        sep = "&" if "?" in url else "?"
        put = httpx.put(f"{url}{sep}digest={_digest(blob)}", content=blob)
        assert put.status_code == 201, put.text
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": _digest(config),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/octet-stream",
                    "digest": _digest(payload),
                    "size": len(payload),
                }
            ],
        }
    ).encode()
    r = httpx.put(
        f"{registry.url}/v2/{repo}/manifests/{tag}",
        content=manifest,
        headers={"content-type": MANIFEST},
    )
    assert r.status_code == 201, r.text
    return _digest(manifest)


@pytest.fixture
def setup(tmp_path: Path, database_url: str | None) -> Iterator[tuple[Api, Registry]]:
    port = free_port()
    settings = load_settings(
        data_dir=tmp_path / "controller",
        database_url=database_url,
        registry_insecure=[f"127.0.0.1:{port}"],
    )
    prepared = prepare(settings)
    with Registry(tmp_path / "registry", port=port) as registry:
        app = create_app(settings)
        with TestClient(app, base_url="https://testserver") as client:
            yield Api(client, prepared.new_admin_token, prepared.controller_id), registry
        app.state.rt.engine.dispose()


def _apply(api: Api, reference: str) -> httpx.Response:
    spec = {"mode": "direct", "models": [{"name": "detector", "reference": reference}]}
    return api.call("POST", "/profiles", api.admin, json={"name": "vision", "spec": spec})


def test_a_tag_is_pinned_to_its_digest_at_apply(setup: tuple[Api, Registry]) -> None:
    api, registry = setup
    first = _push(registry, "models/detector", "1.0", b"weights one")
    tagged = f"{registry.host}/models/detector:1.0"
    assert _apply(api, tagged).status_code == 200
    stored = api.ok("GET", "/profiles/vision", api.admin)["spec"]["models"][0]["reference"]
    assert stored == f"{tagged}@{first}"

    api.site()
    dev = api.device(api.token(profile="vision")["token"])
    desired = api.call("GET", f"/devices/{dev.id}/desired", dev.access_token).json()
    assert desired["models"] == [
        {
            "name": "detector",
            "reference": f"{tagged}@{first}",
            "digest": first,
            "origin": f"http://{registry.host}",
        }
    ]

    # The same tag again names the same bytes: no new revision. Moved, it makes one.
    assert _apply(api, tagged).json()["created_revision"] is False
    second = _push(registry, "models/detector", "1.0", b"weights two")
    moved = _apply(api, tagged).json()
    assert moved["created_revision"] is True and moved["revision"] == 2
    stored = api.ok("GET", "/profiles/vision", api.admin)["spec"]["models"][0]["reference"]
    assert stored.endswith(second)


def test_a_tag_that_does_not_resolve_is_refused_and_nothing_is_stored(
    setup: tuple[Api, Registry],
) -> None:
    api, registry = setup
    _push(registry, "models/detector", "1.0", b"weights")
    r = _apply(api, f"{registry.host}/models/detector:2.0")
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "/models/0/reference" in message and "does not resolve" in message
    r = _apply(api, f"{registry.host}/models/nothing-here:1.0")
    assert r.status_code == 422 and "does not resolve" in r.json()["error"]["message"]
    r = _apply(api, "127.0.0.1:1/models/detector:1.0")  # nothing listens there
    assert r.status_code == 422 and "cannot resolve" in r.json()["error"]["message"]
    assert api.ok("GET", "/profiles", api.admin) == []


def test_a_pinned_reference_needs_no_registry(setup: tuple[Api, Registry]) -> None:
    api, registry = setup
    registry.stop()
    pinned = f"{registry.host}/models/detector@sha256:" + "ab" * 32
    assert _apply(api, pinned).status_code == 200
    stored = api.ok("GET", "/profiles/vision", api.admin)["spec"]["models"][0]["reference"]
    assert stored == pinned
