"""The OpenAPI document describes errors as the controller answers them, so generated
clients and schemathesis's conformance check see the real shape of a 422."""

from __future__ import annotations

from typing import Any

import jsonschema

from tests.support.apiclient import Api


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node  # type: ignore[no-any-return]


def test_an_invalid_request_is_answered_in_the_shape_the_document_gives(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    operation = doc["paths"]["/api/v1/tokens"]["post"]
    documented = operation["responses"]["422"]["content"]["application/json"]["schema"]
    schema = _resolve(doc, documented)
    assert schema["required"] == ["error"], schema
    assert "ValidationError" not in doc["components"]["schemas"], "an unused old shape"

    answer = api.call("POST", "/tokens", api.admin, json={"uses": "many"})
    assert answer.status_code == 422
    jsonschema.validate(answer.json(), schema)
    assert answer.json()["error"]["code"] == "invalid_request"
    assert "uses" in answer.json()["error"]["message"]
    # The old document's shape would not have matched the answer at all.
    assert "detail" not in answer.json()
