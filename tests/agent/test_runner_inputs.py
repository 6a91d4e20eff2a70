"""Inputs the runner refuses before onnxruntime sees them, for element types the tiny
float model of test_runner.py cannot show: NumPy would cast these silently."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from edgefleet.agent.runner.api import TensorSpec
from edgefleet.agent.runner.inputs import InputError, digest, parse


def body(**inputs: object) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


def spec(type_: str, shape: list[int | str | None]) -> list[TensorSpec]:
    return [TensorSpec(name="t", type=type_, shape=shape)]


@pytest.mark.parametrize(
    ("type_", "value", "reason"),
    [
        ("tensor(int8)", [300], "outside the range of tensor(int8) [-128, 127]"),
        ("tensor(uint8)", [-1], "outside the range of tensor(uint8)"),
        ("tensor(int64)", [1.5], "must hold integers"),
        ("tensor(float)", [True], "must hold numbers"),
        ("tensor(bool)", [1], "must hold booleans"),
        ("tensor(string)", [1], "must hold strings"),
        ("tensor(int64)", [2**70], "a mix of types"),
    ],
)
def test_values_numpy_would_cast_silently_are_refused(type_: str, value: list, reason: str) -> None:
    with pytest.raises(InputError, match=re.escape(reason)):
        parse(body(t=value), spec(type_, [None]))


def test_values_that_fit_arrive_with_the_model_s_element_type() -> None:
    got = parse(body(t=[[1, 2]]), spec("tensor(float16)", [1, "N"]))["t"]
    assert got.dtype == np.float16 and got.shape == (1, 2)
    assert parse(body(t=[True, False]), spec("tensor(bool)", [2]))["t"].dtype == np.bool_


def test_the_inputs_digest_ignores_how_the_json_was_spelled() -> None:
    specs = spec("tensor(float)", ["N"])
    one = parse(b'{"inputs": {"t": [1, 2.0]}}', specs)
    two = parse(b'{"inputs":{"t":[1.0,2]}}', specs)
    three = parse(b'{"inputs":{"t":[1.0,3]}}', specs)
    assert digest(one) == digest(two) != digest(three)
