"""Errors of the OCI client, one family under :class:`edgefleet.errors.EdgefleetError`.

    OciError                  base; the message names the step that failed
    ├── BadReference          a reference an operator must rewrite
    ├── RegistryUnreachable   no TCP/TLS connection, or it broke mid-answer
    ├── RegistryAuthError     the registry refused the credentials or the token
    ├── RegistryStatusError   any other non-success answer (``status``, registry ``errors``)
    │   └── ArtifactNotFound  404: no such repository, tag, manifest or blob
    ├── DigestMismatch        bytes whose SHA-256 is not the digest they were asked for
    └── NotAModel             the artifact holds no ONNX file Edgefleet can serve

Third-party and socket errors are converted where they happen (``raise ... from exc``),
so callers catch one family.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError


class OciError(EdgefleetError):
    default_code = "oci"


class BadReference(OciError):
    default_code = "bad_reference"


class RegistryUnreachable(OciError):
    default_code = "registry_unreachable"


class RegistryAuthError(OciError):
    default_code = "registry_auth"


class RegistryStatusError(OciError):
    default_code = "registry_error"

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class ArtifactNotFound(RegistryStatusError):
    default_code = "not_found"


class DigestMismatch(OciError):
    default_code = "digest_mismatch"


class NotAModel(OciError):
    default_code = "not_a_model"
