"""The runner's drift sketch (``edgefleet.drift.sketch``): live traffic through a real
onnxruntime session counted into the reference's bins. A shifted stream must read as
drift and an unshifted one must not; windows close on the wall clock; memory stays
fixed however long the runner serves."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.drift.reference import Reference, compute
from edgefleet.drift.sketch import Sketch
from edgefleet.errors import ConfigError
from edgefleet.models.pack import read_signature
from tests.support.onnxmodels import affine
from tests.test_drift_reference import labels_model, two_inputs_data, two_inputs_model

FEATURES = 32
WINDOW = 60.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reference]:
    folder = tmp_path_factory.mktemp("sketch")
    path = affine(folder / "affine.onnx", inputs=FEATURES, outputs=4)
    x = np.random.default_rng(0).normal(size=(2000, FEATURES)).astype(np.float32)
    np.savez(folder / "ref.npz", x=x)
    return path, compute(path, folder / "ref.npz", read_signature(path))


def stream(path: Path, shift: float, n: int = 2000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(shift, 1.0, size=(n, FEATURES)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return x, session.run(None, {"x": x})[0]


def fed(reference: Reference, x: np.ndarray, y: np.ndarray, batch: int = 1, **kw: float) -> Sketch:
    sketch = Sketch(reference, window_seconds=WINDOW, now=0.0, **kw)
    for i in range(0, len(x), batch):
        sketch.update({"x": x[i : i + batch]}, {"y": y[i : i + batch]}, now=1.0)
    return sketch


def test_an_unshifted_stream_reads_as_stable(model: tuple[Path, Reference]) -> None:
    path, reference = model
    scores = fed(reference, *stream(path, 0.0)).scores()
    features = [scores[f"x[{i}]"] for i in range(FEATURES)]
    assert all(s is not None and s["psi"] < 0.1 for s in features), features
    assert scores["y"]["psi"] < 0.1 and scores["y:confidence"]["psi"] < 0.1  # type: ignore[index]


def test_a_shifted_stream_reads_as_drift(model: tuple[Path, Reference]) -> None:
    path, reference = model
    scores = fed(reference, *stream(path, 1.0)).scores()
    for i in range(FEATURES):
        assert scores[f"x[{i}]"]["psi"] > 0.25, (i, scores[f"x[{i}]"])  # type: ignore[index]
        assert scores[f"x[{i}]"]["ks"] > 0.3  # type: ignore[index]


def test_counting_the_reference_rows_gives_back_the_reference(
    model: tuple[Path, Reference],
) -> None:
    """The sketch bins exactly as the reference did (searchsorted, side right), one row
    at a time or in batches."""
    path, reference = model
    x = np.load(path.with_name("ref.npz"))["x"]
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    by_row, batched = fed(reference, x, y), fed(reference, x, y, batch=64)
    expected = [c for _, h in reference.histograms() for c in h.counts]
    assert by_row.current().counts.tolist() == expected
    assert batched.current().counts.tolist() == expected
    assert all(s == {"psi": 0.0, "ks": 0.0, "js": 0.0} for s in by_row.scores().values())


def test_the_window_rolls_over_on_the_wall_clock(model: tuple[Path, Reference]) -> None:
    path, reference = model
    x, y = stream(path, 0.0, n=300)
    sketch = Sketch(reference, window_seconds=WINDOW, now=125.0, min_samples=100)
    assert sketch.current().start == 120.0  # aligned, so devices' windows line up
    for i in range(150):
        assert sketch.update({"x": x[i : i + 1]}, {"y": y[i : i + 1]}, now=130.0 + i / 10) is None
    assert sketch.roll(now=179.9) is None
    closed = sketch.update({"x": x[150:151]}, {"y": y[150:151]}, now=185.0)
    assert closed is not None and (closed.start, closed.seconds) == (120.0, WINDOW)
    assert closed.seen == closed.samples == 150
    assert sketch.last is closed and sketch.current().seen == 1
    assert sketch.current().start == 180.0
    assert sketch.scores()["x[0]"] is not None  # the closed window, 150 samples
    assert sketch.scores(sketch.current())["x[0]"] is None  # one sample: no score
    assert sketch.roll(now=1000.0) is not None  # the one-inference window
    assert sketch.roll(now=5000.0) is None  # idle windows are not reported


def test_sampling_counts_every_nth_inference(model: tuple[Path, Reference]) -> None:
    path, reference = model
    x, y = stream(path, 0.0, n=1000)
    window = fed(reference, x, y, sample_rate=0.25).current()
    assert (window.seen, window.samples) == (1000, 250)
    assert int(window.counts[: reference.features[0].histogram.bins].sum()) == 250


def test_memory_stays_fixed_however_long_it_serves(model: tuple[Path, Reference]) -> None:
    path, reference = model
    x, y = stream(path, 0.0, n=500)
    sketch = Sketch(reference, window_seconds=WINDOW, now=0.0)
    sketch.update({"x": x[:1]}, {"y": y[:1]}, now=0.0)
    sketch.roll(now=WINDOW)
    size = sketch.nbytes
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(20_000):
        i = n % 500
        sketch.update({"x": x[i : i + 1]}, {"y": y[i : i + 1]}, now=WINDOW + n * 0.01)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert sketch.nbytes == size < 64_000
    assert grown < 64_000, f"{grown} bytes kept after 20,000 inferences"
    assert sketch.last is not None and sketch.last.seen == 6000  # windows of 60 s at 100/s


def test_the_wire_form_is_small_and_names_its_reference(model: tuple[Path, Reference]) -> None:
    path, reference = model
    sketch = fed(reference, *stream(path, 1.0))
    wire = sketch.to_wire()
    assert wire["reference"] == reference.digest()
    assert (wire["seen"], wire["samples"], wire["start"], wire["seconds"]) == (2000, 2000, 0, 60)
    assert len(wire["counts"]) == sum(h.bins for _, h in reference.histograms())
    assert wire["scores"]["inputs"]["psi"] > 0.25 and wire["scores"]["inputs"]["feature"]
    assert set(wire["scores"]) == {"inputs", "y", "y:confidence"}
    assert len(json.dumps(wire, separators=(",", ":"))) < 2600  # 3 models within 8 KB


def test_labels_and_values_outputs(tmp_path: Path) -> None:
    labels = labels_model(tmp_path / "labels.onnx", inputs=4)
    x = np.random.default_rng(3).normal(size=(400, 4)).astype(np.float32)
    np.savez(tmp_path / "r.npz", x=x)
    reference = compute(labels, tmp_path / "r.npz", read_signature(labels))
    [answers] = ort.InferenceSession(str(labels), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    sketch = Sketch(reference, now=0.0)
    for i in range(400):
        sketch.update({"x": x[i : i + 1]}, {"label": answers[i : i + 1]}, now=1.0)
    assert sketch.scores()["label"] == {"psi": 0.0, "ks": 0.0, "js": 0.0}
    sketch.update({"x": x[:1]}, {"label": np.array([99])}, now=1.0)  # a label never seen
    assert sketch.current().counts[-1] == 1  # the "other" bin

    regressor = affine(tmp_path / "reg.onnx", inputs=4, outputs=1)
    reference = compute(regressor, tmp_path / "r.npz", read_signature(regressor))
    assert reference.outputs[0].kind == "values"
    y = ort.InferenceSession(str(regressor), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    sketch = fed(reference, x, y)
    assert sketch.scores()["y"] == {"psi": 0.0, "ks": 0.0, "js": 0.0}
    assert sketch.scores(sketch.current())["y"] is not None


def test_several_inputs_are_counted_each_against_its_own_edges(tmp_path: Path) -> None:
    model = two_inputs_model(tmp_path / "two.onnx")
    data = np.load(two_inputs_data(tmp_path / "two.npz"))
    reference = compute(model, tmp_path / "two.npz", read_signature(model))
    x, z = data["x"], data["z"].astype(np.int64)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    [y] = session.run(None, {"x": x, "z": z})
    sketch = Sketch(reference, now=0.0)
    for i in range(len(x)):
        sketch.update({"x": x[i : i + 1], "z": z[i : i + 1]}, {"y": y[i : i + 1]}, now=1.0)
    expected = [c for _, h in reference.histograms() for c in h.counts]
    assert sketch.current().counts.tolist() == expected


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"sample_rate": 0.0}, "drift sample rate 0.0: give a share in"),
        ({"sample_rate": 1.5}, "drift sample rate 1.5"),
        ({"window_seconds": 0.0}, "drift window 0.0 s: give a positive number"),
        ({"window_seconds": float("inf")}, "drift window inf s"),
    ],
)
def test_bad_settings_are_refused(model: tuple[Path, Reference], kw: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Sketch(model[1], **kw)
