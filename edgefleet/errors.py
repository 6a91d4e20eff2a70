"""One family of errors for every part of Edgefleet.

    EdgefleetError                 base; ``code`` is stable, ``message`` is for people
    ├── ConfigError                a setting, flag or file an operator must fix
    ├── TrustError                 a server chain matched no pin, or a signature failed
    └── ApiError                   an HTTP answer that is not a success (``status``)
        ├── BadRequest        400  malformed input; nothing was stored
        ├── Unauthorized      401  missing, forged or expired credentials
        ├── Forbidden         403  authenticated, but not allowed (decommissioned, role)
        ├── NotFound          404
        ├── Conflict          409  the request contradicts stored state
        ├── Gone              410  expired, exhausted or revoked registration token
        ├── PayloadTooLarge   413
        ├── RateLimited       429  ``retry_after`` seconds
        ├── Unavailable       503  ``retry_after`` seconds
        └── InsufficientStorage 507  a full disk; nothing was stored; ``retry_after``

The controller raises these and renders them as ``{"error": {"code", "message"}}``;
clients turn that body back into the same class with :func:`from_response_body`,
so a CLI or agent caller sees the controller's own words.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EdgefleetError(Exception):
    """Base of every error Edgefleet raises on purpose."""

    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class ConfigError(EdgefleetError):
    default_code = "config"


class TrustError(EdgefleetError):
    default_code = "trust"


class ApiError(EdgefleetError):
    status: ClassVar[int] = 500
    default_code = "internal"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ApiError):
    status = 400
    default_code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    default_code = "forbidden"


class NotFound(ApiError):
    status = 404
    default_code = "not_found"


class Conflict(ApiError):
    status = 409
    default_code = "conflict"


class Gone(ApiError):
    status = 410
    default_code = "gone"


class PayloadTooLarge(ApiError):
    status = 413
    default_code = "payload_too_large"


class RateLimited(ApiError):
    status = 429
    default_code = "rate_limited"


class Unavailable(ApiError):
    status = 503
    default_code = "unavailable"


class InsufficientStorage(ApiError):
    """The controller's disk (or its database server's) is full: the request stored
    nothing and may be retried once an operator has freed space."""

    status = 507
    default_code = "disk_full"


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        RateLimited,
        Unavailable,
        InsufficientStorage,
    )
}


def from_response_body(status: int, body: Any, *, retry_after: float | None = None) -> ApiError:
    """Rebuild the controller's error from an HTTP answer (any JSON shape)."""
    cls = _BY_STATUS.get(status, ApiError)
    code, message = None, f"HTTP {status}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            message = str(err.get("message", message))
        elif "detail" in body:
            message = str(body["detail"])
    err_obj = cls(message, code=code, retry_after=retry_after)
    if cls is ApiError:
        err_obj.status = status  # type: ignore[misc]
    return err_obj
