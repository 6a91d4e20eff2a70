"""A model's inputs and outputs: names, element types, shapes with symbolic dimensions.

The shape of each entry is the one onnxruntime reports (``NodeArg``): the element type
as ``tensor(float)``, a number per fixed dimension, a name or None for a free one, so the
runner and the artifact describe a model in the same words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgefleet.oci.errors import OciError

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    type: str
    """``tensor(float)``, ``tensor(int64)``, … as onnxruntime writes it."""
    shape: list[Dim]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, doc: Any) -> TensorSpec:
        shape = doc["shape"]
        if not isinstance(doc["name"], str) or not isinstance(shape, list):
            raise TypeError("name or shape")
        if not all(d is None or isinstance(d, int | str) for d in shape):
            raise TypeError("dimension")
        return cls(doc["name"], str(doc["type"]), shape)


@dataclass(frozen=True)
class Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def to_json(self) -> str:
        doc = {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Signature:
        try:
            doc = json.loads(text)
            return cls(
                [TensorSpec.from_json(t) for t in doc["inputs"]],
                [TensorSpec.from_json(t) for t in doc["outputs"]],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise OciError(
                "reading the model's signature annotation: it is not the JSON Edgefleet "
                f"writes ({exc}); push the model again with edgefleet models push"
            ) from exc

    def summary(self) -> str:
        """``x: tensor(float)[N,4] -> y: tensor(float)[N,2]``, for a table cell."""

        def one(t: TensorSpec) -> str:
            dims = ",".join("?" if d is None else str(d) for d in t.shape)
            return f"{t.name}: {t.type}[{dims}]"

        return ", ".join(map(one, self.inputs)) + " -> " + ", ".join(map(one, self.outputs))
