"""Pack an ``.onnx`` file as a ModelPack artifact and push it, with an int8 twin on request.

Runs where ``edgefleet models push`` runs, with onnx, onnxruntime and NumPy, imported
here only: the device side reads artifacts without them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.drift.reference import Reference
from edgefleet.drift.reference import compute as compute_reference
from edgefleet.errors import ConfigError
from edgefleet.models.artifact import (
    PROBE_FILE,
    REFERENCE_FILE,
    config_bytes,
    file_annotations,
    manifest_annotations,
)
from edgefleet.models.probe import NUMPY_TYPES, Probe, Tensor
from edgefleet.models.signature import Signature, TensorSpec
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.push import Blob, push
from edgefleet.oci.reference import check_repository, check_tag

if TYPE_CHECKING:
    import numpy as np
    import onnx

FP32_TOLERANCE = (1e-3, 1e-4)
"""(rtol, atol) for the model as given: CPUs with other vector units round differently,
a wrong file or a broken runtime differs by far more."""
INT8_RTOL = 5e-2
INT8_ATOL_SHARE = 2e-2
"""int8 kernels differ between CPUs by whole quantization steps (onnxruntime picks u8s8
or u8u8 paths by instruction set), so the probe allows 2% of the output's range."""
QUANTIZATIONS = ("int8",)


@dataclass(frozen=True)
class PackedModel:
    tag: str
    variant: str
    """``fp32`` (as given) or ``int8``."""
    config: Blob
    layers: list[Blob]
    annotations: dict[str, str]
    signature: Signature
    probe: Probe
    reference: Reference | None = None


@dataclass(frozen=True)
class PushedModel:
    tag: str
    digest: str
    variant: str
    signature: Signature
    probe: Probe
    reference: Reference | None = None


def read_signature(path: Path) -> Signature:
    """Inputs (initializers excluded) and outputs of the model's graph, from onnx."""
    return _signature(_load(path), path)


def _signature(model: onnx.ModelProto, path: Path) -> Signature:
    import onnx

    graph = model.graph
    weights = {t.name for t in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise ConfigError(
                f"{path}: {value.name} is a {kind}, not a tensor; Edgefleet serves models "
                "whose inputs and outputs are tensors"
            )
        tensor = value.type.tensor_type
        element = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        shape = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim
        ]
        return TensorSpec(value.name, f"tensor({element})", shape)

    return Signature(
        [spec(v) for v in graph.input if v.name not in weights], [spec(v) for v in graph.output]
    )


def make_probe(path: Path, signature: Signature, variant: str = "fp32") -> Probe:
    """Deterministic inputs from the signature (free dimensions set to 1) and what
    onnxruntime answers for them now."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    inputs = {spec.name: _probe_input(rng, spec, path) for spec in signature.inputs}
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        values = session.run(None, inputs)
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        raise ConfigError(
            f"computing the golden probe: onnxruntime cannot run {path}: {exc}"
        ) from exc
    outputs = {}
    for spec, value in zip(signature.outputs, values, strict=True):
        if not isinstance(value, np.ndarray) or _type_of(value) is None:
            raise ConfigError(
                f"computing the golden probe: output {spec.name} of {path} is not a numeric "
                "tensor; Edgefleet cannot compare it"
            )
        outputs[spec.name] = value
    rtol, atol = FP32_TOLERANCE
    if variant == "int8":
        scale = max((float(np.max(np.abs(v))) for v in outputs.values() if v.size), default=0)
        rtol, atol = INT8_RTOL, INT8_ATOL_SHARE * scale + 1e-3
    return Probe(
        [_tensor(name, array) for name, array in inputs.items()],
        [_tensor(name, array) for name, array in outputs.items()],
        rtol,
        atol,
    )


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantization of the weights (onnxruntime.quantization), with 7-bit
    weights (``reduce_range``): x86 CPUs without VNNI saturate the u8s8 products of full
    8-bit weights, and the variant must answer alike on every device."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, reduce_range=True)
    except Exception as exc:  # the quantizer raises whatever its passes raise
        raise ConfigError(f"quantizing {source} to int8 failed: {exc}") from exc
    return target


def pack(
    path: Path,
    name: str,
    version: str,
    variant: str = "fp32",
    filename: str | None = None,
    reference: Path | None = None,
    reference_outputs: str = "auto",
) -> PackedModel:
    """The artifact's config, layers and annotations, ready to push. With ``reference``
    (an ``.npz`` of representative inputs), the drift reference computed with this very
    file (an int8 twin answers a little differently) goes in a layer of its own."""
    check_repository(name)
    tag = check_tag(version if variant == "fp32" else f"{version}-{variant}")
    model = _load(path)
    signature = _signature(model, path)
    probe = make_probe(path, signature, variant)
    weight = Blob.of_file(mt.MODEL_WEIGHT_RAW, path, file_annotations(filename or path.name))
    probe_blob = Blob.of_bytes(mt.EDGEFLEET_PROBE, probe.to_bytes(), file_annotations(PROBE_FILE))
    layers = [weight, probe_blob]
    drift = None
    if reference is not None:
        drift = compute_reference(path, reference, signature, reference_outputs)
        layers.append(
            Blob.of_bytes(
                mt.EDGEFLEET_DRIFT_REFERENCE, drift.to_bytes(), file_annotations(REFERENCE_FILE)
            )
        )
    config = Blob.of_bytes(
        mt.MODEL_CONFIG,
        config_bytes(
            name=name,
            version=version,
            precision=variant,
            quantization="dynamic" if variant == "int8" else None,
            param_size=_param_size(model),
            diff_ids=[layer.descriptor.digest for layer in layers],
        ),
    )
    return PackedModel(
        tag,
        variant,
        config,
        layers,
        manifest_annotations(name, version, variant, signature),
        signature,
        probe,
        drift,
    )


def push_model(
    client: RegistryClient,
    path: Path,
    name: str,
    version: str,
    quantize: str | None = None,
    reference: Path | None = None,
    reference_outputs: str = "auto",
) -> list[PushedModel]:
    """Push the model under ``version`` and, with ``quantize="int8"``, its quantized twin
    under ``<version>-int8``, each with its drift reference when ``reference`` names the
    representative inputs; returns what was pushed, in that order."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize {quantize!r}: the choices are {', '.join(QUANTIZATIONS)}")
    if not path.is_file():
        raise ConfigError(f"{path} is not a file: give the path of an .onnx model")
    if reference is not None and not reference.is_file():
        raise ConfigError(f"--reference {reference} is not a file: give an .npz of inputs")
    client.ping()  # before packing, which may take a while for a large model
    packed = pack(path, name, version, reference=reference, reference_outputs=reference_outputs)
    pushed = [_push(client, packed)]
    if quantize == "int8":
        with tempfile.TemporaryDirectory(prefix="edgefleet-int8-") as tmp:
            twin = quantize_int8(path, Path(tmp) / f"{path.stem}.int8{mt.ONNX_SUFFIX}")
            packed = pack(twin, name, version, "int8", twin.name, reference, reference_outputs)
            pushed.append(_push(client, packed))
    return pushed


def _push(client: RegistryClient, packed: PackedModel) -> PushedModel:
    name = packed.annotations[mt.ANNOTATION_NAME]
    digest = push(
        client,
        name,
        packed.tag,
        packed.config,
        packed.layers,
        artifact_type=mt.MODEL_ARTIFACT,
        annotations=packed.annotations,
    )
    return PushedModel(
        packed.tag, digest, packed.variant, packed.signature, packed.probe, packed.reference
    )


def _load(path: Path) -> onnx.ModelProto:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # DecodeError, ValidationError, OSError: all mean "not a model"
        raise ConfigError(f"{path} is not a valid ONNX model: {exc}") from exc
    return model


def _param_size(model: onnx.ModelProto) -> str:
    """ModelPack's ``paramSize``: the number of weights with a scale letter (``1.2K``)."""
    import math

    count = sum(math.prod(t.dims) for t in model.graph.initializer)
    for scale, letter in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if count >= scale:
            return f"{count / scale:.1f}{letter}"
    return f"{max(count / 1e3, 0.1):.1f}K"


def _probe_input(rng: np.random.Generator, spec: TensorSpec, path: Path) -> np.ndarray:

    dtype = NUMPY_TYPES.get(spec.type)
    if dtype is None:
        raise ConfigError(
            f"computing the golden probe: input {spec.name} of {path} has element type "
            f"{spec.type}; a probe can be built for {', '.join(sorted(NUMPY_TYPES))}"
        )
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
    if dtype.startswith("float"):
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    # 0 and 1 only: integer inputs are often indices or flags, where larger values may
    # be out of range for the model.
    return rng.integers(0, 2, size=shape).astype(dtype)


def _type_of(array: np.ndarray) -> str | None:
    for onnx_type, dtype in NUMPY_TYPES.items():
        if array.dtype == dtype:
            return onnx_type
    return None


def _tensor(name: str, array: np.ndarray) -> Tensor:
    import numpy as np

    onnx_type = _type_of(array)
    assert onnx_type is not None
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return Tensor(name, onnx_type, list(array.shape), little.tobytes())
