"""``SlotApplier`` against a real registry: the daemon's drop-in for direct mode.

Models are pushed as the CLI pushes them; one artifact carries the golden probe of
another model (the probe packed from model X, the weight layer from model Y), so it
loads and answers, just not what its probe expects.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.buffer import Buffer
from edgefleet.agent.results import RESULTS_DB, RESULTS_FOLDER
from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.settings import load_settings
from edgefleet.agent.slots.image import ImageSlots
from edgefleet.agent.update.applier import SlotApplier, UpdateFailed
from edgefleet.agent.update.engine import UpdateRefused
from edgefleet.errors import ConfigError
from edgefleet.models.artifact import file_annotations
from edgefleet.models.pack import pack, push_model
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.push import Blob, push
from edgefleet.oci.transport import Endpoint
from edgefleet.wire import DesiredState, HealthPolicy, ModelRef
from tests.support.onnxmodels import affine
from tests.support.registry import Registry, require_registry

REPO = "models/m"
X = [[0.5, -1.0, 2.0, 0.25]]


class Fleet:
    """A registry with pushed models, and desired states naming them."""

    def __init__(self, registry: Registry, work: Path) -> None:
        self.registry = registry
        self.work = work
        self.client = RegistryClient(Endpoint.parse(registry.host, plain_http=True))

    def push(self, seed: int, version: str) -> str:
        model = affine(self.work / f"m{seed}.onnx", seed=seed)
        [pushed] = push_model(self.client, model, REPO, version)
        return pushed.digest

    def push_mismatched(self, probe_seed: int, weight_seed: int, version: str) -> str:
        """The probe of one model packed with the file of another."""
        packed = pack(affine(self.work / f"m{probe_seed}.onnx", seed=probe_seed), REPO, version)
        other = affine(self.work / f"m{weight_seed}.onnx", seed=weight_seed)
        weight = Blob.of_file(mt.MODEL_WEIGHT_RAW, other, file_annotations("m.onnx"))
        return push(
            self.client,
            REPO,
            version,
            packed.config,
            [weight, packed.layers[1]],
            artifact_type=mt.MODEL_ARTIFACT,
            annotations=packed.annotations,
        )

    def desired(
        self, revision: int, digest: str, health: HealthPolicy | None = None
    ) -> DesiredState:
        ref = ModelRef(
            name="m",
            reference=f"{self.registry.host}/{REPO}@{digest}",
            digest=digest,
            origin=self.registry.url,
        )
        return DesiredState(
            device_id="d1", revision=revision, models=[ref], interval_seconds=60, health=health
        )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    require_registry()
    with Registry(tmp_path / "registry") as registry:
        f = Fleet(registry, tmp_path)
        yield f
        f.client.close()


@pytest.fixture
def sockets() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="efa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _version(sockets: Path) -> str:
    client = RunnerClient(sockets / "m.sock", 5.0)
    try:
        return client.predict({"x": X})["model"]["version"]
    finally:
        client.close()


def test_slot_applier_commits_a_good_revision_and_rolls_back_a_bad_one_with_evidence(
    fleet: Fleet, tmp_path: Path, sockets: Path
) -> None:
    state = tmp_path / "state"
    applier = SlotApplier(state, sockets, lambda scope: "", threads=1)
    try:
        assert applier.apply(fleet.desired(1, fleet.push(1, "1.0"))) == 1
        assert applier.apply(fleet.desired(2, fleet.push(2, "2.0"))) == 2
        assert _version(sockets) == "2.0"
        with Buffer(state / RESULTS_FOLDER / RESULTS_DB) as results:
            [row] = results.read_from(0)  # the health checks' calls are not the device's
        assert (row.slot, row.revision) == ("B", 2)
        assert applier.last_outcome().outcome == "committed"  # type: ignore[union-attr]

        bad = fleet.desired(3, fleet.push_mismatched(3, 4, "3.0"))
        with pytest.raises(UpdateFailed, match=r"revision 3 rolled back in slot A: .*probe"):
            applier.apply(bad)
        assert _version(sockets) == "2.0"
        outcome = applier.last_outcome()
        assert outcome is not None and (outcome.outcome, outcome.slot) == ("rolled_back", "A")
        bundle = json.loads(Path(outcome.evidence).read_text())
        assert Path(outcome.evidence).parent == state / "evidence"
        [probe] = [c for c in bundle["failed_checks"] if c["name"] == "probe"]
        assert probe["evidence"]["m"]["y"]["expected"] != probe["evidence"]["m"]["y"]["actual"]
        assert any("health check probe FAILED" in line for line in bundle["log"])
        record = applier.slots()
        assert record.active == "B" and record.slots["A"].state == "bad"
        assert record.slots["A"].bad_revisions == [3]
        with pytest.raises(UpdateRefused):
            applier.apply(bad)
    finally:
        applier.close()

    # A restarted agent serves its active slot before it hears from the controller.
    again = SlotApplier(state, sockets, lambda scope: "")
    try:
        assert _version(sockets) == "2.0"
    finally:
        again.close()


def test_slot_applier_reads_the_health_policy_from_the_desired_state(
    fleet: Fleet, tmp_path: Path, sockets: Path
) -> None:
    applier = SlotApplier(tmp_path / "state", sockets, lambda scope: "")
    try:
        applier.apply(fleet.desired(1, fleet.push(1, "1.0")))
        slow = HealthPolicy(checks=[{"type": "latency", "p95_ms": 0.001, "samples": 5}])
        with pytest.raises(UpdateFailed, match="latency"):
            applier.apply(fleet.desired(2, fleet.push(2, "2.0"), slow))
        assert _version(sockets) == "1.0"
    finally:
        applier.close()


def test_slots_on_image_files_commit_and_roll_back_like_folders(
    fleet: Fleet, tmp_path: Path, sockets: Path
) -> None:
    images = {}
    for slot in ("A", "B"):
        images[slot] = tmp_path / f"slot-{slot}.img"
        with images[slot].open("wb") as f:
            f.truncate(8 << 20)  # the image's size is the slot's capacity
    settings = load_settings({"slot_images": f"A={images['A']},B={images['B']}"}, env={})
    assert dict(settings.slot_images) == images
    slots = ImageSlots(dict(settings.slot_images), tmp_path / "mnt")
    applier = SlotApplier(tmp_path / "state", sockets, lambda scope: "", slots=slots)
    try:
        assert applier.apply(fleet.desired(1, fleet.push(1, "1.0"))) == 1
        assert applier.apply(fleet.desired(2, fleet.push(2, "2.0"))) == 2
        with pytest.raises(UpdateFailed, match="probe"):
            applier.apply(fleet.desired(3, fleet.push_mismatched(3, 4, "3.0")))
        assert _version(sockets) == "2.0"
        record = applier.slots()
        assert record.slots[record.active].revision == 2  # type: ignore[index]
        assert b"EFSLOT01" in images[record.active].read_bytes()[:4096]  # type: ignore[index]
    finally:
        applier.close()
    with pytest.raises(ConfigError, match="name both slots"):
        load_settings({"slot_images": "A=/dev/sdb1"}, env={})


def test_a_model_too_big_for_the_disk_fails_cleanly_and_the_old_one_serves(
    fleet: Fleet, small_fs: Path, sockets: Path, tmp_path: Path
) -> None:
    state = small_fs / "state"
    applier = SlotApplier(state, sockets, lambda scope: "")
    try:
        assert applier.apply(fleet.desired(1, fleet.push(1, "1.0"))) == 1
        free = shutil.disk_usage(small_fs).free
        big = affine(tmp_path / "big.onnx", seed=9, pad_bytes=12 << 20)
        [pushed] = push_model(fleet.client, big, REPO, "9.0")
        with pytest.raises(UpdateFailed, match=r"do not fit .* nothing was kept"):
            applier.apply(fleet.desired(2, pushed.digest))
        assert _version(sockets) == "1.0"
        record = applier.slots()
        assert record.active == "A" and record.slots["A"].state == "good"
        assert record.slots["B"].state in ("empty", "bad")  # never half a set
        assert not list((state / "models" / "ingest").glob("*.partial"))
        assert shutil.disk_usage(small_fs).free >= free - (64 << 10)  # staging cleaned
    finally:
        applier.close()
