"""Pull a model by digest: manifest, probe, drift reference and ``.onnx`` file into the
blob store.

A reference must carry ``@sha256:``: the device runs exactly what its desired state
pinned, never whatever a tag names today. The manifest is verified against that digest
and every blob against its descriptor, so nothing unverified reaches the runner.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.oci.download import Source, download_blob, every_source_failed
from edgefleet.agent.oci.store import BlobStore
from edgefleet.models.artifact import describe
from edgefleet.models.probe import Probe
from edgefleet.models.signature import Signature
from edgefleet.oci import reference as refs
from edgefleet.oci.auth import Authenticator, PasswordAuth, ScopedTokens
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import (
    BadReference,
    DigestMismatch,
    OciError,
    RegistryAuthError,
    RegistryStatusError,
    RegistryUnreachable,
)
from edgefleet.oci.manifest import Manifest
from edgefleet.oci.transport import Endpoint

TokenSource = Callable[[str], str]
"""scope (``repository:NAME:pull``) -> a bearer token for it (from the controller)."""


@dataclass(frozen=True)
class PulledModel:
    reference: str
    """As asked for, pinned by digest."""
    digest: str
    """The manifest's digest."""
    path: Path
    """The ``.onnx`` file, in the store under its own digest."""
    model_digest: str
    signature: Signature | None
    probe: Probe | None
    """None for an artifact without one (e.g. a plain ``.onnx`` pushed by oras)."""
    name: str | None
    version: str | None
    drift_reference: bytes | None = None
    """The drift reference document (verified by digest), when the model has one."""


class Puller:
    """Pulls into one store, from the site's mirrors first, then the reference's registry."""

    def __init__(
        self,
        store: BlobStore,
        *,
        mirrors: list[str] | None = None,
        token: TokenSource | None = None,
        plain_http: bool = False,
        ca_file: Path | None = None,
        retries: int = 3,
        timeout: float = 60.0,
    ) -> None:
        """``mirrors`` are base URLs (``http://mirror.site:5000``) of registries holding
        the same repositories; ``plain_http`` speaks http to the origin registry."""
        self.store = store
        self.retries = retries
        self._auth: Authenticator = ScopedTokens(token) if token else PasswordAuth(ca_file=ca_file)
        self._plain_http, self._ca_file, self._timeout = plain_http, ca_file, timeout
        self._mirrors = [
            self._client(Endpoint.parse(m, ca_file=ca_file, timeout=timeout)) for m in mirrors or []
        ]
        self._origins: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def pull(self, reference: str, origin: str | None = None) -> PulledModel:
        """The model ``reference`` (``host/repo[:tag]@sha256:<hex>``) names, in the store.

        ``origin`` is the registry's base URL when the controller gave one
        (``http://host:port`` for a registry it reaches over plain HTTP)."""
        ref = refs.parse(reference)
        if ref.digest is None:
            raise BadReference(
                f"pulling {reference}: a device pulls by digest only; pin it as "
                f"{ref.registry}/{ref.repository}@sha256:<hex> (the controller resolves tags "
                "when a profile is applied)"
            )
        sources = self.sources(ref, origin)
        manifest = Manifest.from_bytes(self._manifest(sources, ref.digest))
        found = describe(manifest)
        probe = None
        if found.probe is not None:
            probe_path = download_blob(
                self.store, sources, found.probe.digest, found.probe.size, self.retries
            )
            probe = Probe.from_bytes(probe_path.read_bytes())
        drift_reference = None
        if found.reference is not None:
            reference_path = download_blob(
                self.store, sources, found.reference.digest, found.reference.size, self.retries
            )
            drift_reference = reference_path.read_bytes()
        path = download_blob(
            self.store, sources, found.model.digest, found.model.size, self.retries
        )
        return PulledModel(
            reference=str(ref),
            digest=ref.digest,
            path=path,
            model_digest=found.model.digest,
            signature=found.signature,
            probe=probe,
            name=found.name,
            version=found.version,
            drift_reference=drift_reference,
        )

    def sources(self, ref: refs.Reference, origin: str | None = None) -> list[Source]:
        """Where ``ref``'s repository is read from, in order: the mirrors, then its registry
        (``origin`` when the controller gave its base URL)."""
        home = self._origin(origin or ref.registry)
        return [Source(c, ref.repository) for c in (*self._mirrors, home)]

    def close(self) -> None:
        for client in (*self._mirrors, *self._origins.values()):
            client.close()

    def _manifest(self, sources: list[Source], digest: str) -> bytes:
        """The manifest's bytes, from the store or the first source that has them right."""
        if self.store.has(digest):
            return self.store.read(digest)
        reasons: list[str] = []
        errors: list[OciError] = []
        for source in sources:
            try:
                fetched = source.client.get_manifest(source.repository, digest)
            except (
                RegistryUnreachable,
                RegistryStatusError,
                RegistryAuthError,
                DigestMismatch,
            ) as exc:
                reasons.append(f"{source.label}: {exc.message}")
                errors.append(exc)
                continue
            self.store.put(digest, fetched.data)
            return fetched.data
        raise every_source_failed(
            f"reading manifest {digest} failed from every source: " + "; ".join(reasons),
            errors,
        )

    def _origin(self, registry: str) -> RegistryClient:
        with self._lock:
            if registry not in self._origins:
                endpoint = Endpoint.parse(
                    registry,
                    plain_http=self._plain_http,
                    ca_file=self._ca_file,
                    timeout=self._timeout,
                )
                self._origins[registry] = self._client(endpoint)
            return self._origins[registry]

    def _client(self, endpoint: Endpoint) -> RegistryClient:
        return RegistryClient(endpoint, self._auth)
