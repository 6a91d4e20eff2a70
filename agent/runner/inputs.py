"""A request body to input arrays, checked against the model's signature first.

onnxruntime's own messages bury the cause in internal details, and NumPy casts
silently (300 wraps around in an int8, ``true`` becomes 1.0), so every check a
caller can get wrong is made here, with a message that says which input and
what was expected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.agent.runner.api import TensorSpec

DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}
"""Element types a JSON number, boolean or string can be given as."""

_ACCEPTS = {"f": ("f", "i", "u"), "i": ("i", "u"), "u": ("i", "u"), "b": ("b",), "U": ("U",)}
"""NumPy kinds of the parsed JSON each target kind accepts: integers in a float
tensor, never floats in an integer one, booleans and strings only as themselves."""

_WHAT = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans", "U": "strings"}


class InputError(ValueError):
    """The request is wrong; the message tells the caller what to change."""


def parse(body: bytes, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """``{"inputs": {name: nested lists}}`` to one array per model input, or InputError."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise InputError('the request body must be a JSON object {"inputs": {name: nested lists}}')
    given: dict[str, Any] = doc["inputs"]
    names = [s["name"] for s in specs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model takes {names}")
    missing = [n for n in names if n not in given]
    if missing:
        raise InputError(f"missing input(s) {missing}; the model takes {names}")
    return {s["name"]: _array(s, given[s["name"]]) for s in specs}


def _array(spec: TensorSpec, value: Any) -> np.ndarray:
    name, type_ = spec["name"], spec["type"]
    dtype = DTYPES.get(type_)
    if dtype is None:
        raise InputError(f"input {name!r} has type {type_}, which cannot be given as JSON")
    try:
        arr = np.asarray(value)
    except ValueError as exc:
        raise InputError(
            f"input {name!r} is not a rectangular array: the lists at each depth must "
            "have the same length"
        ) from exc
    kind = np.dtype(dtype).kind
    if arr.size and arr.dtype.kind not in _ACCEPTS[kind]:
        raise InputError(f"input {name!r} must hold {_WHAT[kind]} ({type_}); got {_describe(arr)}")
    _check_shape(name, spec["shape"], arr.shape)
    if kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise InputError(
                f"input {name!r} has values outside the range of {type_} [{info.min}, {info.max}]"
            )
    return arr.astype(dtype, copy=False)


def _describe(arr: np.ndarray) -> str:
    kind = arr.dtype.kind
    if kind == "O":
        return "a mix of types, nulls or objects"
    return _WHAT.get(kind, str(arr.dtype))


def _check_shape(name: str, want: Sequence[int | str | None], got: tuple[int, ...]) -> None:
    shown = "[" + ", ".join("?" if d is None else str(d) for d in want) + "]"
    if len(got) != len(want):
        raise InputError(
            f"input {name!r} must have {len(want)} dimension(s) {shown}; got {len(got)} {list(got)}"
        )
    for axis, (w, g) in enumerate(zip(want, got, strict=True)):
        if isinstance(w, int) and w >= 0 and w != g:
            raise InputError(
                f"input {name!r} must have shape {shown}; got {list(got)} "
                f"(dimension {axis} is {g}, not {w})"
            )


def digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, types, shapes and values: the same inputs give the same digest
    however the JSON was spelled, so a stored result can be matched to its inputs."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()
