"""Tiny ONNX models for tests and benchmarks, built with ``onnx.helper``.

``affine`` is ``y = x @ W + b`` with input ``x: float32[N, inputs]`` and output
``y: float32[N, outputs]``; ``pad_bytes`` adds an unused-looking but real weight so a
model can be made as large as a benchmark needs (10 MB, 50 MB) without changing its
answers. The weights come from ``seed``, so two calls with the same arguments give the
same bytes and a different seed gives a different model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def affine(
    path: Path,
    inputs: int = 4,
    outputs: int = 2,
    seed: int = 0,
    pad_bytes: int = 0,
    name: str = "affine",
) -> Path:
    """Write the model to ``path`` and return it."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((inputs, outputs)).astype(np.float32)
    bias = rng.standard_normal(outputs).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    if pad_bytes > 0:
        # A real weight the graph uses: y + sum(pad) * 0, so the runtime must load it.
        pad = rng.standard_normal(max(1, pad_bytes // 4)).astype(np.float32)
        zero = np.zeros(1, dtype=np.float32)
        initializers += [numpy_helper.from_array(pad, "pad"), numpy_helper.from_array(zero, "z")]
        nodes[-1] = helper.make_node("Add", ["xw", "b"], ["y0"])
        nodes += [
            helper.make_node("ReduceSum", ["pad"], ["padsum"], keepdims=1),
            helper.make_node("Mul", ["padsum", "z"], ["padzero"]),
            helper.make_node("Add", ["y0", "padzero"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def expected(path: Path, x: np.ndarray) -> np.ndarray:
    """What the model answers, computed from its weights with NumPy (not onnxruntime)."""
    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return x.astype(np.float32) @ weights["W"] + weights["b"]
