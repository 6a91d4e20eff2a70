"""Download one blob into the store: mirrors first, resumed with Range, verified.

For each source in order (the site's mirrors, then the origin registry):

- a partial file left by an earlier cut is resumed from its end (``Range``), its prefix
  hashed again so the final digest covers every byte on disk;
- a connection that breaks is retried from where it stopped, while it keeps making
  progress (``retries`` attempts without progress, then the next source);
- bytes whose digest is wrong are deleted and fetched again once from the start (the
  fault may have been the partial file); wrong twice, the source is skipped.

Only when every source failed is the pull refused, with each source's reason.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.oci.store import BlobStore
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import (
    DigestMismatch,
    OciError,
    RegistryAuthError,
    RegistryStatusError,
    RegistryUnreachable,
)
from edgefleet.oci.transport import BLOCK, Response

BACKOFF_S = 0.2
BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class Source:
    client: RegistryClient
    repository: str

    @property
    def label(self) -> str:
        return f"{self.client.endpoint.base_url}/{self.repository}"


def download_blob(
    store: BlobStore, sources: list[Source], digest: str, size: int, retries: int = 3
) -> Path:
    """The blob's path in the store, downloaded if it is not there yet (once, however
    many threads or processes ask at the same time)."""
    with store.exclusive(digest):
        if store.has(digest):
            return store.path(digest)
        _check_room(store, digest, size)
        reasons: list[str] = []
        errors: list[OciError] = []
        for source in sources:
            try:
                return _from(store, source, digest, size, retries)
            except (RegistryUnreachable, RegistryStatusError, RegistryAuthError) as exc:
                reasons.append(f"{source.label}: {exc.message}")
                errors.append(exc)
            except DigestMismatch as exc:
                reasons.append(f"{source.label}: refused twice, {exc.message}")
                errors.append(exc)
        raise every_source_failed(
            f"downloading blob {digest} ({size} bytes) failed from every source: "
            + "; ".join(reasons),
            errors,
        )


def outage(exc: OciError) -> bool:
    """A registry that did not answer, or answered that it cannot now (5xx, 429): a
    fault of the network or the registry, which passes, not of the artifact."""
    if isinstance(exc, RegistryUnreachable):
        return True
    return isinstance(exc, RegistryStatusError) and (exc.status >= 500 or exc.status == 429)


def every_source_failed(message: str, errors: list[OciError]) -> OciError:
    """RegistryUnreachable when every source failed by an outage (the update waits for
    the registry rather than failing), else the pull's failure."""
    if errors and all(outage(e) for e in errors):
        return RegistryUnreachable(message, code="pull_failed")
    return OciError(message, code="pull_failed")


def _from(store: BlobStore, source: Source, digest: str, size: int, retries: int) -> Path:
    partial = store.partial(digest)
    refetched = False
    stalled = 0
    while True:
        before = _length(partial)
        try:
            _transfer(source, partial, digest, size)
            return store.commit(digest, partial)
        except DigestMismatch:
            partial.unlink(missing_ok=True)
            if refetched:
                raise
            refetched = True
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            partial.unlink(missing_ok=True)  # a full disk is no place to resume into
            raise _no_space(store, digest, size) from exc
        except RegistryUnreachable:
            stalled = 0 if _length(partial) > before else stalled + 1
            if stalled > retries:
                raise
            time.sleep(min(BACKOFF_S * 2 ** max(stalled - 1, 0), BACKOFF_MAX_S))


def _transfer(source: Source, partial: Path, digest: str, size: int) -> None:
    """Bring ``partial`` to the whole blob and check its digest (DigestMismatch if not)."""
    step = f"downloading blob {digest} from {source.label}"
    offset = _length(partial)
    if offset > size:
        partial.unlink()
        offset = 0
    hasher = _hash_prefix(partial, offset)
    if offset < size:
        response, resumed_at = _open(source, digest, offset, step)
        if resumed_at != offset:
            offset, hasher = 0, hashlib.sha256()
        with response, partial.open("r+b" if offset else "wb") as f:
            f.seek(offset)
            f.truncate()
            written = offset
            for chunk in response.chunks(BLOCK):
                written += len(chunk)
                if written > size:
                    raise DigestMismatch(
                        f"{step}: the registry sent more than the {size} bytes the "
                        "manifest says the blob has"
                    )
                f.write(chunk)
                hasher.update(chunk)
        if written < size:
            raise RegistryUnreachable(f"{step}: the answer ended after {written} of {size} bytes")
    actual = "sha256:" + hasher.hexdigest()
    if actual != digest:
        raise DigestMismatch(f"{step}: the bytes received hash to {actual}; deleted, not used")


def _open(source: Source, digest: str, offset: int, step: str) -> tuple[Response, int]:
    """The blob from ``offset``, or from 0 when the registry cannot or will not resume."""
    response = source.client.get_blob(source.repository, digest, offset)
    if response.status == 416:
        response.read()
        if not offset:
            raise RegistryStatusError(f"{step}: HTTP 416 for the whole blob", status=416)
        return source.client.get_blob(source.repository, digest), 0
    if response.status == 200:
        return response, 0
    if not _starts_at(response.header("Content-Range"), offset):
        response.close()
        raise RegistryUnreachable(
            f"{step}: asked to resume at byte {offset}, the registry answered "
            f"{response.header('Content-Range')}"
        )
    return response, offset


def _hash_prefix(partial: Path, length: int) -> hashlib._Hash:
    hasher = hashlib.sha256()
    if length:
        with partial.open("rb") as f:
            left = length
            while left:
                data = f.read(min(BLOCK, left))
                if not data:
                    break
                hasher.update(data)
                left -= len(data)
    return hasher


def _starts_at(content_range: str | None, offset: int) -> bool:
    """``bytes 100-999/1000`` starts at 100."""
    if not content_range:
        return False
    unit, _, spec = content_range.partition(" ")
    return unit == "bytes" and spec.split("-", 1)[0].strip() == str(offset)


def _check_room(store: BlobStore, digest: str, size: int) -> None:
    """Refuse before writing a byte when the blob cannot fit: staging that fills the disk
    would starve everything else on the device."""
    needed = size - _length(store.partial(digest))
    if needed > shutil.disk_usage(store.ingest).free:
        raise _no_space(store, digest, size)


def _no_space(store: BlobStore, digest: str, size: int) -> OciError:
    free = shutil.disk_usage(store.ingest).free
    return OciError(
        f"staging blob {digest}: {size} bytes do not fit in {store.root} ({free} bytes free); "
        "nothing was kept: free space on the device (or use a smaller model) and the update "
        "is tried again",
        code="no_space",
    )


def _length(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
