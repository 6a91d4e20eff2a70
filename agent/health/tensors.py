"""The golden probe without NumPy: the daemon must not load it (memory budget).

``Probe.compare`` needs NumPy, which lives in the runner's child process only. This
reads the probe's little-endian tensors with ``struct``, sends the inputs as nested
lists, and applies the same rule as ``numpy.allclose`` to the answer:
``|actual - expected| <= atol + rtol * |expected|`` everywhere (NaN never matches).
"""

from __future__ import annotations

import math
import struct
from typing import Any

from edgefleet.models.probe import Probe, Tensor

FORMATS = {
    "tensor(float)": "f",
    "tensor(double)": "d",
    "tensor(float16)": "e",
    "tensor(int8)": "b",
    "tensor(int16)": "h",
    "tensor(int32)": "i",
    "tensor(int64)": "q",
    "tensor(uint8)": "B",
    "tensor(uint16)": "H",
    "tensor(uint32)": "I",
    "tensor(uint64)": "Q",
    "tensor(bool)": "?",
}
"""``struct`` codes of the element types a probe carries (``edgefleet.models.probe``)."""

EVIDENCE_VALUES = 32
"""Values of each output kept as evidence: enough to see the difference, not a dump."""


def values(tensor: Tensor) -> list[Any]:
    """The tensor's elements, flat, in C order."""
    code = FORMATS[tensor.type]
    count = math.prod(tensor.shape)
    return list(struct.unpack(f"<{count}{code}", tensor.data))


def nested(flat: list[Any], shape: list[int]) -> Any:
    """Flat C-order values to nested lists of ``shape`` (the runner's JSON inputs)."""
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = math.prod(shape[1:])
    return [nested(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def flatten(value: Any) -> tuple[list[Any], list[int]]:
    """Nested lists to (flat values, shape); ValueError if not rectangular."""
    if not isinstance(value, list):
        return [value], []
    parts = [flatten(v) for v in value]
    inner = parts[0][1] if parts else []
    if any(shape != inner for _, shape in parts):
        raise ValueError("not a rectangular array")
    return [x for flat, _ in parts for x in flat], [len(value), *inner]


def probe_inputs(probe: Probe) -> dict[str, Any]:
    """The probe's inputs as the body of ``POST /predict`` wants them."""
    return {t.name: nested(values(t), t.shape) for t in probe.inputs}


def compare(probe: Probe, outputs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(problems, evidence): one line per output that differs, and for each output the
    first values expected and received, with the largest difference."""
    problems: list[str] = []
    evidence: dict[str, Any] = {}
    for want in probe.outputs:
        expected = values(want)
        shown: dict[str, Any] = {"shape": want.shape, "expected": expected[:EVIDENCE_VALUES]}
        evidence[want.name] = shown
        if want.name not in outputs:
            problems.append(f"{want.name}: missing from the model's outputs")
            continue
        try:
            actual, shape = flatten(outputs[want.name])
        except ValueError:
            problems.append(f"{want.name}: the runner answered a ragged array")
            continue
        shown.update(actual=actual[:EVIDENCE_VALUES], actual_shape=shape)
        if shape != want.shape:
            problems.append(f"{want.name}: shape {shape}, expected {want.shape}")
            continue
        worst = max((_distance(a, e) for a, e in zip(actual, expected, strict=True)), default=0.0)
        shown["max_abs_diff"] = worst
        close = all(
            _distance(a, e) <= probe.atol + probe.rtol * abs(float(e))
            for a, e in zip(actual, expected, strict=True)
        )
        if not close:
            problems.append(
                f"{want.name}: differs by up to {worst:g} "
                f"(rtol {probe.rtol:g}, atol {probe.atol:g})"
            )
    return problems, evidence


def _distance(actual: Any, expected: Any) -> float:
    """|actual - expected|; infinite when either is not a number (NaN never matches)."""
    try:
        a, e = float(actual), float(expected)
    except (TypeError, ValueError):
        return math.inf
    if a == e:
        return 0.0  # infinities match only themselves, as numpy.allclose has it
    d = abs(a - e)
    return math.inf if math.isnan(d) else d
