"""The model inside the runner: one onnxruntime session, its signature, calls into it."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgefleet.agent.runner.api import ModelInfo, ModelRef, TensorSpec
from edgefleet.agent.runner.inputs import InputError


class ModelError(Exception):
    """The model file cannot be served; the message says what the operator must fix."""


class InferenceError(Exception):
    """onnxruntime failed on inputs that passed every check: a fault of the model or runtime."""


@dataclass(frozen=True)
class Model:
    ref: ModelRef
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    session: ort.InferenceSession

    def info(self) -> ModelInfo:
        return ModelInfo(model=self.ref, inputs=self.inputs, outputs=self.outputs)

    def run(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, object], float]:
        """Outputs by name (as nested lists) and onnxruntime's time in milliseconds."""
        values, latency_ms = self.run_arrays(arrays)
        outputs = {
            name: value.tolist() if isinstance(value, np.ndarray) else value
            for name, value in values.items()
        }
        return outputs, latency_ms

    def run_arrays(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], float]:
        """Outputs by name as onnxruntime gives them (arrays, for the drift sketch) and
        its time in milliseconds."""
        started = time.perf_counter()
        try:
            values = self.session.run(None, arrays)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            # Checks that span inputs (a symbolic dimension shared by two of them).
            raise InputError(f"onnxruntime refused the inputs: {exc}") from exc
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        latency_ms = (time.perf_counter() - started) * 1000
        named = {spec["name"]: value for spec, value in zip(self.outputs, values, strict=True)}
        return named, latency_ms


def session_options(threads: int) -> ort.SessionOptions:
    """Small-device settings: a fixed number of compute threads that sleep when idle
    (onnxruntime's default spins them, burning a core between calls), and warnings
    only in the log."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load(path: Path, name: str, version: str, expected_digest: str | None, threads: int) -> Model:
    """Read the file once, check its digest, and build the session from those bytes, so
    the model served is exactly the one whose digest is reported."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"model file {path} does not exist") from exc
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if expected_digest and digest != expected_digest:
        raise ModelError(
            f"model file {path} has digest {digest}, not the expected {expected_digest}: "
            "it changed on disk or was not completely written; pull it again"
        )
    try:
        session = ort.InferenceSession(
            data, session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, Fail, ...: Exception only
        raise ModelError(f"onnxruntime cannot load {path} as an ONNX model: {exc}") from exc
    return Model(
        ref=ModelRef(name=name, version=version, digest=digest),
        inputs=[_spec(a) for a in session.get_inputs()],
        outputs=[_spec(a) for a in session.get_outputs()],
        session=session,
    )


def _spec(arg: ort.NodeArg) -> TensorSpec:
    return TensorSpec(name=arg.name, type=arg.type, shape=list(arg.shape or []))
