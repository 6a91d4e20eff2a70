"""SHA-256 digests of bytes and files, the way OCI writes them (``sha256:<hex>``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgefleet.oci.errors import DigestMismatch


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def of_file(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def hex_of(digest: str) -> str:
    """The hex part of ``sha256:<hex>``: the file name in a content-addressed store."""
    return digest.split(":", 1)[1]


def verify(data: bytes, expected: str, what: str) -> bytes:
    """``data`` if its digest is ``expected``; otherwise say what arrived instead."""
    actual = of_bytes(data)
    if actual != expected:
        raise DigestMismatch(
            f"{what}: expected {expected} but the registry sent bytes with digest {actual}; "
            "the registry or a proxy on the way corrupted it"
        )
    return data
