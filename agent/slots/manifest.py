"""A set's manifest: ``{relative path: "sha256:<hex>"}``, and its one digest.

The record keeps only the digest of the canonical manifest JSON, so a slot
that holds another set (or none) is told apart from the one the record names
without storing the manifest twice. Paths come from the controller, so they
are checked before any of them names a file on the device.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from edgefleet.errors import EdgefleetError

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
RESERVED_PREFIX = ".edgefleet"
"""Names the slot backends keep for themselves; a set may not use them."""


class ManifestError(EdgefleetError):
    default_code = "slot_manifest"


def canonical(manifest: Mapping[str, str]) -> bytes:
    """The bytes every digest of a manifest is taken over (sorted keys, no spaces)."""
    return json.dumps(dict(manifest), sort_keys=True, separators=(",", ":")).encode()


def manifest_digest(manifest: Mapping[str, str]) -> str:
    """What ``SlotInfo.manifest_digest`` holds for a slot carrying ``manifest``."""
    return "sha256:" + hashlib.sha256(canonical(manifest)).hexdigest()


def check_manifest(manifest: Mapping[str, str]) -> dict[str, str]:
    """The manifest as a plain dict, refused if a path could leave the slot's folder."""
    if not manifest:
        raise ManifestError("the set's manifest is empty: a slot never holds an empty set")
    for rel, digest in manifest.items():
        parts = PurePosixPath(rel).parts
        if (
            not rel
            or rel.startswith("/")
            or "\\" in rel
            or any(p in ("", ".", "..") for p in rel.split("/"))
            or parts[0].startswith(RESERVED_PREFIX)
        ):
            raise ManifestError(f"manifest path {rel!r} is not a plain relative path in the set")
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise ManifestError(f"manifest entry {rel!r} has digest {digest!r}, not sha256:<hex>")
    return dict(manifest)


def build_manifest(folder: Path) -> dict[str, str]:
    """The manifest of every regular file under ``folder`` (staging and tests use it)."""
    manifest = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        manifest[path.relative_to(folder).as_posix()] = file_digest(path)
    return check_manifest(manifest)


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, read through the page cache (staging, not verification)."""
    with path.open("rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
