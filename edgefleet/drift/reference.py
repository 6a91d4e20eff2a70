"""Reference distributions: what a model's inputs and outputs looked like on data the
operator calls representative, stored in the artifact beside the golden probe
(``edgefleet models push --reference inputs.npz``) so that devices and the controller can
score live traffic against it.

**What is accepted.** An ``.npz`` (``numpy.savez``) with one array per model input, keyed
by the input's name; other keys (labels, say) are ignored. Each array holds rows along
its first axis and the model's shape for one row after it (free dimensions take any
size); all inputs have the same number of rows, at least ``MIN_ROWS``; the element kind
must cast to the model's type without changing kind (ints and bools feed a float input,
floats never feed an int one); no NaN or infinity. Pickled object arrays are refused.
The rows go through the model with onnxruntime (``BATCH_ROWS`` at a time when the batch
dimension is free, else the model's own batch size, which must divide the rows).

**What is stored** (``Reference``, JSON, ``FORMAT`` version ``VERSION``):

- Input features: each row of each input is flattened; a feature is (input, flat index).
  At most ``MAX_FEATURES`` are sketched: all when there are that few, else the ones with
  the largest standard deviation over the reference rows (a constant pixel at the border
  of an image carries no signal; ties go to the lower index), kept in input and index
  order. Each gets ``BINS`` bins between quantile edges of the reference (deciles, each
  edge a value of the data, numpy's ``method="higher"``, so that a discrete feature's
  edges are its own values), open-ended outer bins, edges rounded to 6 significant
  digits and deduplicated (a feature with few distinct values has fewer bins; a
  constant one gets a bin below, at and above its value).
- Outputs, each as one of two kinds (``kind="auto"`` decides per output; a flag forces
  one for all): ``classes`` for an integer output (its values are labels) or a float
  output with one vector of at least 2 scores per row (the label is the argmax), with
  the class frequencies of the ``MAX_CLASSES`` most frequent labels and one bin for every
  other label, and a confidence histogram of the top score over ``CONFIDENCE_EDGES``
  (fixed tenths of 0..1; scores that are not already probabilities summing to 1 go
  through a softmax first, recorded as ``scores: softmax``); ``values`` for anything else
  (a regressor), one histogram of all its values pooled, with quantile edges as inputs.

Every histogram bins a value ``v`` into ``searchsorted(edges, v, side="right")``: bin
``i`` holds ``edges[i-1] <= v < edges[i]``. Reading and writing the document needs only
the standard library (the controller has no NumPy); computing it needs NumPy and
onnxruntime, imported inside :func:`compute` only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgefleet.errors import ConfigError
from edgefleet.models.probe import NUMPY_TYPES
from edgefleet.models.signature import Signature, TensorSpec

if TYPE_CHECKING:
    import numpy as np

FORMAT = "edgefleet.drift.reference"
VERSION = 1
MIN_ROWS = 100
"""Fewer rows make deciles of a handful of points: edges and counts nobody can trust."""
MAX_FEATURES = 32
BINS = 10
MAX_CLASSES = 20
"""Classes with their own bin; the rest share one, so a 1,000-class model's sketch stays
small on the wire."""
CONFIDENCE_EDGES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
BATCH_ROWS = 256
SIGNIFICANT = 6

OutputKind = Literal["classes", "values"]
KINDS = ("auto", "classes", "values")


@dataclass(frozen=True)
class Histogram:
    """Counts over bins: ``len(edges) + 1`` of them for values, ``len(classes) + 1`` for
    classes (the last one is every other label)."""

    counts: list[int]
    edges: list[float] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)

    @property
    def bins(self) -> int:
        return len(self.counts)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"counts": self.counts}
        if self.classes:
            doc["classes"] = self.classes
        else:
            doc["edges"] = self.edges
        return doc

    @classmethod
    def from_json(cls, doc: Any, classes: bool = False) -> Histogram:
        counts = [_int(c) for c in doc["counts"]]
        if classes:
            labels = [_int(c) for c in doc["classes"]]
            if labels != sorted(set(labels)) or len(counts) != len(labels) + 1:
                raise ValueError("classes must be sorted, distinct, one fewer than counts")
            return cls(counts, classes=labels)
        edges = [float(e) for e in doc["edges"]]
        if not all(math.isfinite(e) for e in edges) or edges != sorted(set(edges)):
            raise ValueError("edges must be finite, increasing and distinct")
        if len(counts) != len(edges) + 1:
            raise ValueError("a histogram has one more count than edges")
        return cls(counts, edges=edges)


@dataclass(frozen=True)
class Feature:
    input: str
    index: int
    """Flat index within one row of the input (C order)."""
    histogram: Histogram


@dataclass(frozen=True)
class InputInfo:
    name: str
    row_shape: list[int]
    """The shape of one row in the reference data (the model's free dimensions fixed)."""


@dataclass(frozen=True)
class Output:
    name: str
    kind: OutputKind
    histogram: Histogram
    scores: Literal["probabilities", "softmax", "labels"] | None = None
    """For ``classes``: how the confidence was read (``labels``: an integer output, none)."""
    confidence: Histogram | None = None
    width: int = 0
    """For classes read from scores: the number of scores per row (labels are below it)."""


@dataclass(frozen=True)
class Reference:
    rows: int
    inputs: list[InputInfo]
    features: list[Feature]
    outputs: list[Output]

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "rows": self.rows,
            "inputs": [{"name": i.name, "row_shape": i.row_shape} for i in self.inputs],
            "features": [
                {"input": f.input, "index": f.index, **f.histogram.to_json()} for f in self.features
            ],
            "outputs": [_output_json(o) for o in self.outputs],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        """Parse and check the document; a ConfigError says what is wrong with it."""
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {FORMAT}")
            if doc.get("version") != VERSION:
                raise ValueError(
                    f"version {doc.get('version')!r}; this Edgefleet reads version {VERSION}"
                )
            inputs = [
                InputInfo(str(i["name"]), [_int(d) for d in i["row_shape"]]) for i in doc["inputs"]
            ]
            sizes = {i.name: math.prod(i.row_shape) for i in inputs}
            features = []
            order = [i.name for i in inputs]
            for f in doc["features"]:
                name, index = str(f["input"]), _int(f["index"])
                if name not in sizes or index >= sizes[name]:
                    raise ValueError(f"feature {name}[{index}] is not in the inputs")
                features.append(Feature(name, index, Histogram.from_json(f)))
            keys = [(order.index(f.input), f.index) for f in features]
            if keys != sorted(set(keys)):
                raise ValueError("features must be distinct, in input order then index order")
            outputs = [_output_from_json(o) for o in doc["outputs"]]
            return cls(_int(doc["rows"]), inputs, features, outputs)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"reading the drift reference: it is not the JSON Edgefleet writes ({exc}); "
                "push the model again with edgefleet models push --reference"
            ) from exc

    def digest(self) -> str:
        """``sha256:<hex>`` of the document: a sketch names the reference it counts against."""
        return "sha256:" + hashlib.sha256(self.to_bytes()).hexdigest()

    def histograms(self) -> list[tuple[str, Histogram]]:
        """Every histogram with its label, in the order sketches lay out their counts:
        features, then each output and its confidence."""
        out = [(f"{f.input}[{f.index}]", f.histogram) for f in self.features]
        for o in self.outputs:
            out.append((o.name, o.histogram))
            if o.confidence is not None:
                out.append((f"{o.name}:confidence", o.confidence))
        return out

    def summary(self) -> str:
        """One line for ``models inspect``."""
        total = sum(math.prod(i.row_shape) for i in self.inputs)
        outputs = ", ".join(
            f"{o.name} {o.kind} ({o.histogram.bins} bins"
            + (", confidence" if o.confidence else "")
            + ")"
            for o in self.outputs
        )
        bins = sorted({f.histogram.bins for f in self.features})
        span = f"{bins[0]}-{bins[-1]}" if len(bins) > 1 else str(bins[0]) if bins else "0"
        return (
            f"{self.rows} rows; {len(self.features)} of {total} input features, {span} bins "
            f"each; outputs: {outputs}"
        )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count or index")
    return value


def _output_json(o: Output) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": o.name, "kind": o.kind, **o.histogram.to_json()}
    if o.scores:
        doc["scores"] = o.scores
    if o.confidence is not None:
        doc["confidence"] = o.confidence.to_json()
    if o.width:
        doc["width"] = o.width
    return doc


def _output_from_json(doc: Any) -> Output:
    kind = doc["kind"]
    if kind not in ("classes", "values"):
        raise ValueError(f"output kind {kind!r}")
    scores = doc.get("scores")
    if scores not in (None, "probabilities", "softmax", "labels"):
        raise ValueError(f"scores {scores!r}")
    confidence = doc.get("confidence")
    histogram = Histogram.from_json(doc, classes=kind == "classes")
    width = _int(doc.get("width", 0))
    if scores in ("probabilities", "softmax") and (
        confidence is None or not histogram.classes or histogram.classes[-1] >= width
    ):
        raise ValueError(f"output {doc['name']}: scores need a confidence and a width")
    return Output(
        str(doc["name"]),
        kind,
        histogram,
        scores,
        Histogram.from_json(confidence) if confidence is not None else None,
        width,
    )


# Computing a reference: NumPy and onnxruntime, CLI side only.


def compute(model: Path, data: Path, signature: Signature, kind: str = "auto") -> Reference:
    """Run the representative rows in ``data`` through ``model`` and histogram both sides."""
    import numpy as np

    if kind not in KINDS:
        raise ConfigError(f"--reference-outputs {kind!r}: the choices are {', '.join(KINDS)}")
    arrays = load_inputs(data, signature)
    rows = next(iter(arrays.values())).shape[0]
    outputs = _run(model, signature, arrays)
    flat = {name: a.reshape(rows, -1).astype(np.float64) for name, a in arrays.items()}
    features = [
        Feature(name, index, _value_histogram(flat[name][:, index]))
        for name, index in _choose_features(flat)
    ]
    return Reference(
        rows,
        [InputInfo(name, list(a.shape[1:])) for name, a in arrays.items()],
        features,
        [
            _output(spec, outputs[spec.name], kind, model)  # type: ignore[arg-type]
            for spec in signature.outputs
        ],
    )


def load_inputs(data: Path, signature: Signature) -> dict[str, np.ndarray]:
    """The model's inputs from the ``.npz``, checked and cast to the model's types."""
    import zipfile

    import numpy as np

    where = f"reference data {data}"
    try:
        loaded = np.load(data, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ConfigError(
                f"{where} is a single .npy array, not an .npz: save it with "
                "numpy.savez(path, <input name>=array), one array per model input"
            )
        with loaded as npz:
            found = {key: npz[key] for key in npz.files}
    except FileNotFoundError as exc:
        raise ConfigError(f"{where}: no such file") from exc
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(
            f"{where} is not an .npz of numeric arrays (numpy.savez, no pickled objects): {exc}"
        ) from exc
    missing = [s.name for s in signature.inputs if s.name not in found]
    if missing:
        raise ConfigError(
            f"{where} has no array for model input(s) {', '.join(missing)}; it holds "
            f"{', '.join(sorted(found)) or 'nothing'}: save one array per input under the "
            "input's name"
        )
    arrays = {s.name: _check_input(found[s.name], s, where) for s in signature.inputs}
    rows = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(rows.values())) > 1:
        raise ConfigError(f"{where}: the inputs have different numbers of rows: {rows}")
    count = next(iter(rows.values()))
    if count < MIN_ROWS:
        raise ConfigError(
            f"{where} holds {count} rows; a reference needs at least {MIN_ROWS} representative rows"
        )
    return arrays


def _check_input(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    import numpy as np

    target = NUMPY_TYPES.get(spec.type)
    if target is None:
        raise ConfigError(
            f"{where}: model input {spec.name} has element type {spec.type}; a reference "
            f"can be computed for {', '.join(sorted(NUMPY_TYPES))}"
        )
    if array.dtype.kind not in "biuf" or not np.can_cast(array.dtype, target, "same_kind"):
        raise ConfigError(
            f"{where}: {spec.name} holds {array.dtype} values; the model's input is "
            f"{spec.type}: save {target} (or a type that converts to it without loss of kind)"
        )
    want = spec.shape
    if len(want) == 0 or array.ndim != len(want):
        raise ConfigError(
            f"{where}: {spec.name} has shape {list(array.shape)}; the model expects "
            f"{_dims(want)}: rows along the first axis, then one row's shape"
        )
    for axis, (got, dim) in enumerate(zip(array.shape[1:], want[1:], strict=True), 1):
        if isinstance(dim, int) and dim > 0 and got != dim:
            raise ConfigError(
                f"{where}: {spec.name} has {got} along axis {axis}; the model expects {_dims(want)}"
            )
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ConfigError(
                f"{where}: {spec.name} holds {bad} NaN or infinite value(s); drop or fill "
                "those rows first"
            )
    return np.ascontiguousarray(array.astype(target))


def _dims(shape: Sequence[object]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _run(model: Path, signature: Signature, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    rows = next(iter(arrays.values())).shape[0]
    batch = signature.inputs[0].shape[0]
    fixed = isinstance(batch, int) and batch > 0
    step = batch if fixed else BATCH_ROWS
    if fixed and rows % step:
        raise ConfigError(
            f"the model takes batches of exactly {step} rows and the reference data has "
            f"{rows}: give a multiple of {step}"
        )
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        chunks = [
            session.run(None, {n: a[start : start + step] for n, a in arrays.items()})
            for start in range(0, rows, step)
        ]
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        raise ConfigError(
            f"computing the drift reference: onnxruntime cannot run {model} on the "
            f"reference data: {exc}"
        ) from exc
    out = {}
    for i, spec in enumerate(signature.outputs):
        parts = [np.asarray(c[i]) for c in chunks]
        sizes = [min(step, rows - start) for start in range(0, rows, step)]
        if any(p.ndim == 0 or p.shape[0] != n for p, n in zip(parts, sizes, strict=True)):
            raise ConfigError(
                f"computing the drift reference: output {spec.name} of {model} does not "
                "answer one row per input row; Edgefleet sketches batch outputs only"
            )
        out[spec.name] = np.concatenate(parts)
    return out


def _choose_features(flat: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """All features when there are at most MAX_FEATURES, else the most variable ones."""
    import numpy as np

    keys = [(name, i) for name, a in flat.items() for i in range(a.shape[1])]
    if len(keys) <= MAX_FEATURES:
        return keys
    spread = np.concatenate([a.std(axis=0) for a in flat.values()])
    order = np.lexsort((np.arange(len(keys)), -spread))[:MAX_FEATURES]
    return [keys[i] for i in sorted(order.tolist())]


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


def _value_histogram(values: np.ndarray) -> Histogram:
    """Decile edges of ``values`` (see the module's docstring) and its counts over them."""
    import numpy as np

    cuts = np.quantile(values, np.arange(1, BINS) / BINS, method="higher")
    edges = sorted({_round(float(c)) for c in cuts})
    if len(edges) == 1:  # a constant: one bin below it, one at it, one above
        step = max(abs(edges[0]) * 1e-5, 1e-6)
        edges = [edges[0], _round(edges[0] + step)]
    return Histogram(counts_of(values, edges), edges=edges)


def counts_of(values: np.ndarray, edges: Sequence[float]) -> list[int]:
    """Counts of ``values`` in the bins ``edges`` bound, as every sketch bins them."""
    import numpy as np

    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return np.bincount(bins, minlength=len(edges) + 1).tolist()


def _output(spec: TensorSpec, values: np.ndarray, kind: str, model: Path) -> Output:
    import numpy as np

    integer = values.dtype.kind in "biu"
    scores_per_row = values.ndim == 2 and values.shape[1] >= 2
    if kind == "auto":
        kind = "classes" if integer or scores_per_row else "values"
    if kind == "values":
        return Output(spec.name, "values", _value_histogram(values.reshape(-1).astype(float)))
    if integer:
        if values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 1):
            raise ConfigError(
                f"output {spec.name} of {model} holds {list(values.shape[1:])} labels per row; "
                "a classes reference needs one label per row"
            )
        return Output(spec.name, "classes", _class_histogram(values.reshape(-1)), "labels")
    if not scores_per_row:
        raise ConfigError(
            f"output {spec.name} of {model} has shape {list(values.shape)}; a classes "
            "reference needs one vector of at least 2 scores per row: use values"
        )
    scores = values.astype(np.float64)
    sums = scores.sum(axis=1)
    probabilities = bool(
        np.all(scores >= 0) and np.all(scores <= 1) and np.allclose(sums, 1, atol=1e-3)
    )
    how: Literal["probabilities", "softmax"] = "probabilities" if probabilities else "softmax"
    top = scores.max(axis=1) if probabilities else softmax_top(scores)
    return Output(
        spec.name,
        "classes",
        _class_histogram(scores.argmax(axis=1)),
        how,
        Histogram(counts_of(top, CONFIDENCE_EDGES), edges=list(CONFIDENCE_EDGES)),
        int(scores.shape[1]),
    )


def softmax_top(scores: np.ndarray) -> np.ndarray:
    """The largest softmax probability of each row: ``1 / sum(exp(s - max))``."""
    import numpy as np

    shifted = scores - scores.max(axis=1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=1)


def _class_histogram(labels: np.ndarray) -> Histogram:
    """The MAX_CLASSES most frequent labels (ties: the lower label) each with a bin, and
    one bin for all others."""
    import numpy as np

    values, counts = np.unique(labels.astype(np.int64), return_counts=True)
    if np.any(values < 0):
        raise ConfigError("a classes reference needs labels >= 0; the model answered negatives")
    order = np.lexsort((values, -counts))[:MAX_CLASSES]
    kept = sorted(int(values[i]) for i in order)
    lookup = dict(zip(values.tolist(), counts.tolist(), strict=True))
    other = int(counts.sum()) - sum(lookup[k] for k in kept)
    return Histogram([lookup[k] for k in kept] + [other], classes=kept)
