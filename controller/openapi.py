"""The OpenAPI document, saying what the API really answers when a request is invalid.

FastAPI documents every 422 as its own ``{"detail": [...]}``, but the controller answers
every error, validation included, as ``{"error": {"code", "message"}}``
(``app._validation_error``). Clients generated from the document, and schemathesis's
schema check, must see the real shape: with ``detail`` optional, a check of the old one
passed whatever came back.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_BODY: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "what went wrong, for programs"},
                "message": {"type": "string", "description": "what to do, for people"},
            },
        }
    },
}


def install(app: FastAPI) -> None:
    """Generate the document once, on first request, with the error shape above."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = doc.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = ERROR_BODY
                schemas.pop("ValidationError", None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
