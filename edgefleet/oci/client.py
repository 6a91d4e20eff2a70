"""A client of the OCI distribution API (``/v2/``): blobs, manifests, tags, catalog.

Every call names the step it serves, and every failure says which step failed and
what to do. Authentication is answered on demand: a 401 challenge goes to the
:data:`~edgefleet.oci.auth.Authenticator`, whose grant is kept per repository until it
expires.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from edgefleet.oci import digest as dg
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.auth import Authenticator, Grant, PasswordAuth, parse_challenge
from edgefleet.oci.errors import (
    ArtifactNotFound,
    DigestMismatch,
    OciError,
    RegistryAuthError,
    RegistryStatusError,
)
from edgefleet.oci.transport import Body, Endpoint, FileBody, Response, Transport

UPLOAD_CHUNK = 64 << 20
"""Blobs up to this size go up in one PUT; larger ones in PATCH chunks of this size, so a
proxy's body limit or a slow link does not have to carry the whole file at once."""
MAX_SMALL_BLOB = 16 << 20
"""Manifests, configs and probes are read into memory; a larger one is refused."""
_PAGE = 1000
_REDIRECTS = (301, 302, 303, 307, 308)
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    digest: str
    """``sha256:`` of ``data``, checked against what the registry said it was."""
    media_type: str


class RegistryClient:
    """One registry. Thread-safe: connections are pooled, grants shared."""

    def __init__(
        self,
        endpoint: Endpoint,
        auth: Authenticator | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.auth: Authenticator = auth or PasswordAuth(
            ca_file=endpoint.ca_file, verify_tls=endpoint.verify_tls
        )
        self._transport = transport or Transport(endpoint)
        self._grants: dict[str, tuple[str, Grant]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API ------------------------------------------------------------------

    def ping(self) -> None:
        """Check that this is a registry speaking the v2 API, and that we may use it."""
        self._call("GET", "/v2/", "", "checking the registry (GET /v2/)").close()

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The blob's size if the repository has it, None otherwise (HEAD)."""
        step = f"checking whether {self._where(repository)} has blob {digest}"
        with self._call("HEAD", _blob(repository, digest), repository, step, ok=(200, 404)) as r:
            return int(r.header("Content-Length") or 0) if r.status == 200 else None

    def get_blob(self, repository: str, digest: str, offset: int = 0) -> Response:
        """A streamed blob from ``offset``: 200 (whole), 206 (from offset) or 416 (offset is
        past the end). The caller verifies the digest of what it writes."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        step = f"downloading blob {digest} from {self._where(repository)}"
        return self._call(
            "GET",
            _blob(repository, digest),
            repository,
            step,
            headers=headers,
            ok=(200, 206, 416),
        )

    def fetch_blob(self, repository: str, digest: str) -> bytes:
        """A small blob (config, probe) in memory, verified."""
        step = f"downloading blob {digest} from {self._where(repository)}"
        with self.get_blob(repository, digest) as r:
            length = int(r.header("Content-Length") or 0)
            if length > MAX_SMALL_BLOB:
                raise OciError(f"{step}: {length} bytes is too large to read into memory")
            data = r.read()
        return dg.verify(data, digest, step)

    def upload_blob(
        self, repository: str, digest: str, source: bytes | Path, chunk: int = UPLOAD_CHUNK
    ) -> None:
        """Upload a blob: one PUT when small, PATCH chunks then PUT when large."""
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        step = f"uploading blob {digest} ({size} bytes) to {self._where(repository)}"
        with self._call(
            "POST", f"/v2/{repository}/blobs/uploads/", repository, step, ok=(202,)
        ) as r:
            location = _location(r, step)
        done = 0
        while size - done > chunk:
            body = _piece(source, done, chunk)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{done}-{done + chunk - 1}",
            }
            with self._call(
                "PATCH", location, repository, step, headers=headers, body=body, ok=(202,)
            ) as r:
                location = _location(r, step)
            done += chunk
        sep = "&" if "?" in location else "?"
        with self._call(
            "PUT",
            f"{location}{sep}digest={quote(digest)}",
            repository,
            step,
            headers={"Content-Type": "application/octet-stream"},
            body=_piece(source, done, size - done),
            ok=(201, 204),
        ):
            pass

    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        """A manifest by tag or digest, its bytes checked against its digest."""
        step = f"reading manifest {reference} of {self._where(repository)}"
        with self._call(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            step,
            headers={"Accept": mt.MANIFEST_ACCEPT},
        ) as r:
            length = int(r.header("Content-Length") or 0)
            if length > MAX_SMALL_BLOB:
                raise OciError(f"{step}: a {length}-byte manifest is not a model manifest")
            data = r.read()
            said = r.header("Docker-Content-Digest")
            media_type = (r.header("Content-Type") or "").split(";")[0].strip()
        actual = dg.of_bytes(data)
        if reference.startswith("sha256:"):
            dg.verify(data, reference, step)
        elif said and said != actual:
            raise DigestMismatch(
                f"{step}: the registry said the manifest is {said} but its bytes hash to "
                f"{actual}; a proxy on the way may have changed it"
            )
        return FetchedManifest(data, actual, media_type)

    def put_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str = mt.OCI_MANIFEST
    ) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        digest = dg.of_bytes(data)
        step = f"storing manifest {digest} as {self._where(repository)}:{reference}"
        with self._call(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository,
            step,
            headers={"Content-Type": media_type},
            body=data,
            ok=(201,),
        ) as r:
            said = r.header("Docker-Content-Digest")
        if said and said != digest:
            raise DigestMismatch(f"{step}: the registry stored it as {said}, not {digest}")
        return digest

    def tags(self, repository: str) -> list[str]:
        step = f"listing the tags of {self._where(repository)}"
        return list(self._pages(f"/v2/{repository}/tags/list?n={_PAGE}", repository, step, "tags"))

    def catalog(self) -> list[str]:
        step = f"listing the repositories of {self.endpoint.host}"
        return list(self._pages(f"/v2/_catalog?n={_PAGE}", "", step, "repositories"))

    # -- plumbing -----------------------------------------------------------------

    def _where(self, repository: str) -> str:
        return f"{self.endpoint.host}/{repository}"

    def _pages(self, target: str, repository: str, step: str, key: str) -> Iterator[str]:
        next_target: str | None = target
        while next_target:
            with self._call("GET", next_target, repository, step) as r:
                body, link = r.read(), r.header("Link")
            try:
                items = json.loads(body).get(key) or []
            except (ValueError, AttributeError) as exc:
                raise OciError(f"{step}: the answer is not the JSON the API defines") from exc
            yield from (str(i) for i in items)
            match = _NEXT_LINK.search(link or "")
            next_target = match.group(1) if match else None

    def _call(
        self,
        method: str,
        target: str,
        repository: str,
        step: str,
        *,
        headers: dict[str, str] | None = None,
        body: Body = None,
        ok: tuple[int, ...] = (200,),
    ) -> Response:
        """One API request: authenticated on challenge, redirects followed, errors named."""
        sent: tuple[str, Grant] | None = None
        hops = 0
        transport = self._transport
        while True:
            hdrs = dict(headers or {})
            same_host = transport is self._transport
            if same_host:
                with self._lock:
                    sent = self._grants.get(repository)
                if sent and sent[1].fresh():
                    hdrs["Authorization"] = sent[1].header
                else:
                    sent = None
            r = transport.request(method, _path(target), hdrs, body, step)
            if r.status == 401 and same_host:
                challenge = parse_challenge(r.header("WWW-Authenticate"))
                r.read()
                if sent is not None and sent[0] == challenge.scope:
                    raise RegistryAuthError(
                        f"{step}: the registry refused the credentials for "
                        f"{challenge.scope or 'this request'} (HTTP 401): check that your "
                        "user may use this repository"
                    )
                grant = self.auth(challenge)
                with self._lock:
                    self._grants[repository] = (challenge.scope, grant)
                if hops > 5:
                    raise RegistryAuthError(f"{step}: the registry keeps asking to authenticate")
                hops += 1
                continue
            if r.status in _REDIRECTS and method in ("GET", "HEAD") and hops < 5:
                location = _location(r, step)
                r.read()
                transport, target = self._follow(location)
                hops += 1
                continue
            if r.status in ok:
                return r
            raise _status_error(r, step)

    def _follow(self, location: str) -> tuple[Transport, str]:
        """A redirect to our own host keeps its credentials; elsewhere (object storage)
        goes without them."""
        parts = urlsplit(location)
        if not parts.netloc or parts.netloc == self.endpoint.host:
            return self._transport, location
        other = Endpoint(
            parts.scheme,
            parts.netloc,
            self.endpoint.ca_file,
            self.endpoint.verify_tls,
            self.endpoint.timeout,
        )
        return Transport(other), location


def _blob(repository: str, digest: str) -> str:
    return f"/v2/{repository}/blobs/{digest}"


def _path(target: str) -> str:
    """A request target from a path or an absolute URL the registry gave us."""
    parts = urlsplit(target)
    if not parts.netloc:
        return target
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _location(r: Response, step: str) -> str:
    location = r.header("Location")
    if not location:
        r.read()
        raise OciError(f"{step}: HTTP {r.status} without the Location header the API requires")
    return location


def _piece(source: bytes | Path, offset: int, length: int) -> Body:
    if isinstance(source, bytes):
        return source[offset : offset + length]
    return FileBody(source, offset, length)


def _status_error(r: Response, step: str) -> OciError:
    """The registry's own error codes and messages, with what to do about the common ones."""
    try:
        body = r.read()
    except OciError:
        body = b""
    detail = _registry_errors(body) or f"HTTP {r.status}"
    if r.status == 404:
        return ArtifactNotFound(f"{step}: not found ({detail})", status=404)
    if r.status in (401, 403):
        return RegistryAuthError(
            f"{step}: HTTP {r.status}, not allowed ({detail}): check that your user may use "
            "this repository"
        )
    return RegistryStatusError(f"{step}: HTTP {r.status} ({detail})", status=r.status)


def _registry_errors(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()
