"""References an operator writes: parsed when well formed, refused with what to write."""

from __future__ import annotations

import pytest

from edgefleet.oci.errors import BadReference
from edgefleet.oci.reference import Reference, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/models/affine:1.0", Reference("127.0.0.1:5000", "models/affine", "1.0")),
        (
            f"registry.example.com/models/affine@{DIGEST}",
            Reference("registry.example.com", "models/affine", None, DIGEST),
        ),
        (
            f"localhost:5000/a/b/c:v1.2-int8@{DIGEST}",
            Reference("localhost:5000", "a/b/c", "v1.2-int8", DIGEST),
        ),
        ("localhost/detector", Reference("localhost", "detector")),
    ],
)
def test_well_formed_references_parse_and_print_back(text: str, expected: Reference) -> None:
    ref = parse(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("models/affine:1.0", "does not start with a registry host"),
        ("detector", "does not start with a registry host"),
        ("http://127.0.0.1:5000/models/affine:1.0", "without a scheme"),
        ("127.0.0.1:5000/Models/Affine:1.0", "not a repository name"),
        ("127.0.0.1:5000/models/affine:-bad", "not a tag"),
        ("127.0.0.1:5000/models/affine@sha256:abc", "not a digest"),
        ("127.0.0.1:5000/models/affine@md5:" + "a" * 32, "not a digest"),
    ],
)
def test_malformed_references_are_refused_with_what_to_write(text: str, says: str) -> None:
    with pytest.raises(BadReference, match=says):
        parse(text)


def test_a_reference_without_tag_or_digest_cannot_name_a_manifest() -> None:
    with pytest.raises(BadReference, match="neither a tag nor a digest"):
        _ = parse("127.0.0.1:5000/models/affine").identifier


def test_pinning_keeps_the_tag_and_the_digest_wins() -> None:
    ref = parse("127.0.0.1:5000/models/affine:1.0").pinned(DIGEST)
    assert ref.identifier == DIGEST
    assert str(ref) == f"127.0.0.1:5000/models/affine:1.0@{DIGEST}"
