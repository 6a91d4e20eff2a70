"""Image references: ``host[:port]/path[:tag][@sha256:<hex>]``.

The host is always written out (no implicit Docker Hub): a fleet pulls from its own
registry, and a reference that silently meant another one would be a surprise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgefleet.oci.errors import BadReference

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_HOST_RE = re.compile(
    r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::\d{1,5})?$"
)

EXAMPLE = "registry.example.com:5000/models/detector:1.2@sha256:<64 hex>"


@dataclass(frozen=True)
class Reference:
    registry: str
    """``host[:port]``, as written."""
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def identifier(self) -> str:
        """What the registry's manifest endpoint is asked for: the digest wins over the tag."""
        if self.digest:
            return self.digest
        if self.tag:
            return self.tag
        raise BadReference(f"{self} names neither a tag nor a digest: add :TAG or @sha256:<hex>")

    def pinned(self, digest: str) -> Reference:
        """The same reference, pinned to ``digest`` (the tag kept for people to read)."""
        return Reference(self.registry, self.repository, self.tag, check_digest(digest))


def check_digest(digest: str) -> str:
    """``digest`` if it is ``sha256:`` and 64 lowercase hex digits; only SHA-256 is used."""
    if not DIGEST_RE.match(digest):
        raise BadReference(f"{digest!r} is not a digest: write sha256: and 64 lowercase hex digits")
    return digest


def check_repository(repository: str) -> str:
    if not REPOSITORY_RE.match(repository):
        raise BadReference(
            f"{repository!r} is not a repository name: use lowercase letters, digits and "
            "'.', '_', '-' between them, in path components separated by '/'"
        )
    return repository


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise BadReference(
            f"{tag!r} is not a tag: up to 128 letters, digits, '_', '.', '-', not starting "
            "with '.' or '-'"
        )
    return tag


def parse(text: str) -> Reference:
    """Parse a reference, or say what is wrong with it and what one looks like."""
    raw = text.strip()
    if "://" in raw:
        raise BadReference(f"{text!r}: write the reference without a scheme, e.g. {EXAMPLE}")
    rest, _, digest = raw.partition("@")
    host, slash, path = rest.partition("/")
    if not slash or not _looks_like_host(host):
        raise BadReference(
            f"{text!r} does not start with a registry host: write host[:port]/repository, "
            f"e.g. {EXAMPLE}"
        )
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        check_tag(tag)
    check_repository(path)
    return Reference(host, path, tag, check_digest(digest) if digest else None)


def _looks_like_host(host: str) -> bool:
    """Docker's rule: a first component with a dot or a port, or ``localhost``."""
    if not _HOST_RE.match(host):
        return False
    return "." in host or ":" in host or host == "localhost"
