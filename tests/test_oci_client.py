"""The OCI client against a real registry (docker-registry on 127.0.0.1, no auth)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.oci import digest as dg
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import (
    ArtifactNotFound,
    DigestMismatch,
    RegistryStatusError,
    RegistryUnreachable,
)
from edgefleet.oci.listing import list_tags
from edgefleet.oci.push import Blob, push
from edgefleet.oci.reference import parse
from edgefleet.oci.resolve import resolve
from edgefleet.oci.transport import Endpoint
from tests.support.registry import Registry

REPO = "models/blobs"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "reg") as reg:
        yield reg


@pytest.fixture
def client(registry: Registry) -> Iterator[RegistryClient]:
    with RegistryClient(Endpoint.parse(registry.host, plain_http=True)) as c:
        yield c


def _stored_blob(registry: Registry, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob's bytes."""
    hex_ = dg.hex_of(digest)
    return registry.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def _artifact(client: RegistryClient, tag: str, payload: bytes) -> str:
    config = Blob.of_bytes(mt.OCI_EMPTY, b"{}")
    layer = Blob.of_bytes("application/octet-stream", payload, {mt.ANNOTATION_TITLE: "x.bin"})
    return push(client, REPO, tag, config, [layer])


def test_small_blob_goes_up_in_one_put_and_comes_back_verified(client: RegistryClient) -> None:
    data = b"hello registry" * 100
    digest = dg.of_bytes(data)
    assert client.blob_size(REPO, digest) is None
    client.upload_blob(REPO, digest, data)
    assert client.blob_size(REPO, digest) == len(data)
    assert client.fetch_blob(REPO, digest) == data


def test_large_file_goes_up_in_chunks(client: RegistryClient, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 4000 + b"tail")  # 1 024 004 bytes: 4 chunks + rest
    digest = dg.of_file(path)
    client.upload_blob(REPO, digest, path, chunk=256 * 1024)
    assert client.blob_size(REPO, digest) == path.stat().st_size
    with client.get_blob(REPO, digest) as r:
        assert r.status == 200
        assert b"".join(bytes(c) for c in r.chunks()) == path.read_bytes()


def test_a_blob_is_served_from_an_offset(client: RegistryClient) -> None:
    data = bytes(range(256)) * 64
    digest = dg.of_bytes(data)
    client.upload_blob(REPO, digest, data)
    with client.get_blob(REPO, digest, offset=1000) as r:
        assert r.status == 206
        assert r.read() == data[1000:]


def test_an_upload_under_the_wrong_digest_is_refused(client: RegistryClient) -> None:
    with pytest.raises(RegistryStatusError, match=r"uploading blob .*DIGEST_INVALID"):
        client.upload_blob(REPO, dg.of_bytes(b"other"), b"this")


def test_a_corrupted_blob_is_refused_not_returned(
    client: RegistryClient, registry: Registry
) -> None:
    data = b"the true bytes" * 10
    digest = dg.of_bytes(data)
    client.upload_blob(REPO, digest, data)
    _stored_blob(registry, digest).write_bytes(b"X" * len(data))
    with pytest.raises(DigestMismatch, match=f"downloading blob {digest}"):
        client.fetch_blob(REPO, digest)


def test_manifest_by_tag_and_by_digest_are_the_same_bytes(client: RegistryClient) -> None:
    digest = _artifact(client, "v1", b"payload")
    by_tag = client.get_manifest(REPO, "v1")
    by_digest = client.get_manifest(REPO, digest)
    assert by_tag.digest == by_digest.digest == digest
    assert by_tag.data == by_digest.data
    assert json.loads(by_tag.data)["layers"][0]["annotations"][mt.ANNOTATION_TITLE] == "x.bin"


def test_pushing_the_same_content_twice_gives_the_same_digest(client: RegistryClient) -> None:
    assert _artifact(client, "v1", b"same") == _artifact(client, "v2", b"same")


def test_resolve_pins_a_tag_to_its_current_digest(
    client: RegistryClient, registry: Registry
) -> None:
    first = _artifact(client, "stable", b"one")
    ref = parse(f"{registry.host}/{REPO}:stable")
    assert resolve(client, ref).digest == first
    second = _artifact(client, "stable", b"two")  # the tag moves
    assert resolve(client, ref) == ref.pinned(second)


def test_a_tag_that_does_not_resolve_is_an_error_naming_it(
    client: RegistryClient, registry: Registry
) -> None:
    _artifact(client, "v1", b"x")
    with pytest.raises(ArtifactNotFound, match=f"reading manifest nope of {registry.host}/{REPO}"):
        resolve(client, parse(f"{registry.host}/{REPO}:nope"))


def test_a_manifest_naming_a_missing_blob_is_refused_with_the_registrys_reason(
    client: RegistryClient,
) -> None:
    config = Blob.of_bytes(mt.OCI_EMPTY, b"{}")
    client.upload_blob(REPO, config.descriptor.digest, b"{}")
    missing = Blob.of_bytes("application/octet-stream", b"never uploaded")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": config.descriptor.to_json(),
            "layers": [missing.descriptor.to_json()],
        }
    ).encode()
    with pytest.raises(RegistryStatusError, match=r"storing manifest .*MANIFEST_BLOB_UNKNOWN"):
        client.put_manifest(REPO, "broken", manifest)


def test_listing_names_every_repository_and_its_tags(client: RegistryClient) -> None:
    _artifact(client, "v2", b"a")
    _artifact(client, "v1", b"b")
    other = Blob.of_bytes(mt.OCI_EMPTY, b"{}")
    push(client, "models/other", "latest", other, [Blob.of_bytes("text/plain", b"c")])
    assert list_tags(client) == {REPO: ["v1", "v2"], "models/other": ["latest"]}
    assert list_tags(client, "models/other") == {"models/other": ["latest"]}
    with pytest.raises(ArtifactNotFound, match=r"listing the tags of .*/models/none"):
        list_tags(client, "models/none")


def test_an_unreachable_registry_names_the_step_and_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        endpoint = Endpoint.parse(f"127.0.0.1:{port}", plain_http=True)
        with (
            RegistryClient(endpoint) as c,
            pytest.raises(RegistryUnreachable, match=rf"checking the registry .*:{port}"),
        ):
            c.ping()


def test_https_to_a_plain_http_registry_fails_with_a_tls_error(registry: Registry) -> None:
    with (
        RegistryClient(Endpoint.parse(registry.host, timeout=5)) as c,
        pytest.raises(RegistryUnreachable, match="cannot reach the registry at https://"),
    ):
        c.ping()
