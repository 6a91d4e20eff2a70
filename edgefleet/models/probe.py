"""The golden probe: fixed inputs, the outputs the model gave at push time, a tolerance.

A device runs the inputs through the model it pulled and compares; a model that loads
but answers differently (a wrong file, a broken runtime, an unsupported CPU path) fails
its health check. Tensors travel as base64 of their little-endian bytes, so the probe
is exact and small. Reading it needs only the standard library; :meth:`Probe.arrays`
and :meth:`Probe.compare` import NumPy, for the runner.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgefleet.oci.errors import OciError

if TYPE_CHECKING:
    import numpy as np

NUMPY_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
"""The element types a probe can carry (numeric and boolean, not strings)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    type: str
    shape: list[int]
    data: bytes
    """Little-endian, C order."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "shape": self.shape,
            "data": base64.b64encode(self.data).decode(),
        }

    @classmethod
    def from_json(cls, doc: Any) -> Tensor:
        if doc["type"] not in NUMPY_TYPES:
            raise ValueError(f"element type {doc['type']!r}")
        shape = [int(d) for d in doc["shape"]]
        return cls(str(doc["name"]), doc["type"], shape, base64.b64decode(doc["data"]))

    def array(self) -> np.ndarray:
        import numpy as np

        dtype = np.dtype(NUMPY_TYPES[self.type]).newbyteorder("<")
        return (
            np.frombuffer(self.data, dtype=dtype)
            .reshape(self.shape)
            .astype(dtype.newbyteorder("="))
        )


@dataclass(frozen=True)
class Probe:
    inputs: list[Tensor]
    outputs: list[Tensor]
    rtol: float
    atol: float
    """Pass when ``|actual - expected| <= atol + rtol * |expected|`` everywhere."""

    def to_bytes(self) -> bytes:
        doc = {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "tolerance": {"rtol": self.rtol, "atol": self.atol},
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Probe:
        try:
            doc = json.loads(data)
            return cls(
                [Tensor.from_json(t) for t in doc["inputs"]],
                [Tensor.from_json(t) for t in doc["outputs"]],
                float(doc["tolerance"]["rtol"]),
                float(doc["tolerance"]["atol"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise OciError(
                f"reading the golden probe: it is not the JSON Edgefleet writes ({exc}); "
                "push the model again with edgefleet models push"
            ) from exc

    def summary(self) -> str:
        shapes = ", ".join(f"{t.name}{t.shape}" for t in self.inputs)
        return f"{shapes}; rtol {self.rtol:g}, atol {self.atol:g}"

    def arrays(self) -> dict[str, np.ndarray]:
        """The probe's inputs, ready for ``InferenceSession.run``."""
        return {t.name: t.array() for t in self.inputs}

    def compare(self, actual: dict[str, np.ndarray]) -> list[str]:
        """What differs from the expected outputs, one line per output; empty if none."""
        import numpy as np

        problems = []
        for want in self.outputs:
            got = actual.get(want.name)
            expected = want.array()
            if got is None:
                problems.append(f"{want.name}: missing from the model's outputs")
                continue
            got = np.asarray(got)
            if got.shape != expected.shape:
                problems.append(f"{want.name}: shape {list(got.shape)}, expected {want.shape}")
            elif not np.allclose(got, expected, rtol=self.rtol, atol=self.atol):
                worst = float(np.max(np.abs(got.astype(np.float64) - expected)))
                problems.append(
                    f"{want.name}: differs by up to {worst:g} (rtol {self.rtol:g}, "
                    f"atol {self.atol:g})"
                )
        return problems
