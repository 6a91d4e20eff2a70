"""A shadow plan on the device, through ``SlotApplier`` against a real registry: the
candidate is pulled apart from the A/B slots, the active model's runner is restarted
with it (the revision and the slots do not move), a removed plan stops it and deletes
its blobs, a restarted agent runs the plan again, and a candidate that cannot be had
(refused signature, missing blob) is reported while the active model serves on."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runner.client import RunnerClient
from edgefleet.agent.update.applier import SlotApplier
from edgefleet.errors import EdgefleetError
from edgefleet.models import signature_store, signing
from edgefleet.models.pack import push_model
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.transport import Endpoint
from edgefleet.wire import DesiredState, ModelRef, ModelSignaturePolicy, ShadowModel, ShadowPlan
from tests.agent.conftest import wait_until
from tests.support.onnxmodels import affine, expected
from tests.support.registry import Registry, require_registry

REPO = "models/m"
X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0]], dtype=np.float32)


class Fleet:
    def __init__(self, registry: Registry, work: Path) -> None:
        self.registry = registry
        self.work = work
        self.client = RegistryClient(Endpoint.parse(registry.host, plain_http=True))

    def push(self, seed: int, version: str) -> ModelRef:
        model = affine(self.work / f"m{seed}.onnx", outputs=3, seed=seed)
        [pushed] = push_model(self.client, model, REPO, version)
        return ModelRef(
            name="m",
            reference=f"{self.registry.host}/{REPO}@{pushed.digest}",
            digest=pushed.digest,
            origin=self.registry.url,
        )

    def desired(
        self,
        active: ModelRef,
        candidate: ModelRef | None = None,
        signatures: ModelSignaturePolicy | None = None,
    ) -> DesiredState:
        plan = None
        if candidate is not None:
            shadow = ShadowModel(key="rollout-4", active="m", model=candidate)
            plan = ShadowPlan(models=[shadow], window_seconds=60)
        return DesiredState(
            device_id="d1",
            revision=1,
            models=[active],
            interval_seconds=60,
            shadow=plan,
            model_signatures=signatures,
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
    path = Path(tempfile.mkdtemp(prefix="efp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _health(sockets: Path) -> dict:
    client = RunnerClient(sockets / "m.sock", 5.0)
    try:
        return dict(client.health())
    finally:
        client.close()


def _answers(sockets: Path) -> np.ndarray:
    client = RunnerClient(sockets / "m.sock", 5.0)
    try:
        return np.array(client.predict({"x": X.tolist()})["outputs"]["y"])
    finally:
        client.close()


class _Caller:
    """An application calling the main socket in a loop on one kept-alive connection."""

    def __init__(self, sockets: Path) -> None:
        self.client = RunnerClient(sockets / "m.sock", 5.0)
        self.want = None
        self.answers = self.wrong = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                got = np.array(self.client.predict({"x": X.tolist()})["outputs"]["y"])
            except EdgefleetError as exc:
                self.failures.append(exc.message)
                continue
            self.answers += 1
            self.wrong += int(not np.allclose(got, self.want, atol=1e-5))

    def __enter__(self) -> _Caller:
        self.want = np.array(self.client.predict({"x": X.tolist()})["outputs"]["y"])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # calls after the old runner stopped reach the new one
        self._stop.set()
        self._thread.join(10)
        self.client.close()


def _blobs(state: Path) -> list[str]:
    folder = state / "shadow" / "blobs" / "sha256"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _running(sockets: Path) -> bool:
    return bool(_health(sockets).get("shadow", {}).get("running"))


def test_a_plan_runs_the_candidate_beside_the_active_model_without_an_update(
    fleet: Fleet, tmp_path: Path, sockets: Path
) -> None:
    state = tmp_path / "state"
    active, candidate = fleet.push(1, "1.0"), fleet.push(2, "2.0")
    applier = SlotApplier(state, sockets, lambda scope: "", threads=1)
    try:
        applier.apply(fleet.desired(active))
        before = applier.slots()
        with _Caller(sockets) as caller:  # calls the main socket throughout the switch
            took = applier.apply_shadow(fleet.desired(active, candidate))
        assert 0 < took < 30
        assert caller.answers > 0 and caller.failures == []  # callers never lost the socket
        assert caller.wrong == 0  # every answer the active model's
        after = applier.slots()
        assert (after.active, after.slots) == (before.active, before.slots)  # no A/B update
        wait_until(lambda: _running(sockets), 20, "the candidate running")
        assert _health(sockets)["shadow"]["digest"] == candidate.digest
        assert np.allclose(_answers(sockets), expected(tmp_path / "m1.onnx", X), atol=1e-5)
        assert candidate.digest.split(":")[1] in _blobs(state)
        assert applier.shadow_checks() == []
        assert applier.apply_shadow(fleet.desired(active, candidate)) == 0.0  # unchanged
    finally:
        applier.close()

    # a restarted agent runs the plan again before it has spoken to the controller
    applier = SlotApplier(state, sockets, lambda scope: "", threads=1)
    try:
        wait_until(lambda: _running(sockets), 20, "the candidate running after a restart")
        applier.apply_shadow(fleet.desired(active))  # the plan is gone
        assert "shadow" not in _health(sockets)
        assert _blobs(state) == []  # its candidate is deleted
        assert np.allclose(_answers(sockets), expected(tmp_path / "m1.onnx", X), atol=1e-5)
    finally:
        applier.close()


def test_a_candidate_that_cannot_be_had_is_reported_and_the_active_model_serves(
    fleet: Fleet, tmp_path: Path, sockets: Path
) -> None:
    state = tmp_path / "state"
    active, unsigned, signed = fleet.push(1, "1.0"), fleet.push(2, "2.0"), fleet.push(3, "3.0")
    key = signing.generate()
    signature_store.add(fleet.client, REPO, signed.digest, key)
    policy = ModelSignaturePolicy.model_validate(
        {"required": True, "keys": [{"id": "release", "public_key": signing.public_pem(key)}]}
    )
    missing = ModelRef(
        name="m",
        reference=f"{fleet.registry.host}/{REPO}@sha256:" + "0" * 64,
        digest="sha256:" + "0" * 64,
        origin=fleet.registry.url,
    )
    applier = SlotApplier(state, sockets, lambda scope: "", threads=1)
    try:
        applier.apply(fleet.desired(active))
        cases = [(unsigned, policy, "is not signed"), (missing, None, "failed from every source")]
        for bad, signatures, reason in cases:
            assert applier.apply_shadow(fleet.desired(active, bad, signatures)) == 0.0
            [check] = applier.shadow_checks()
            assert check.name == "shadow m" and not check.ok and reason in check.detail
            assert "shadow" not in _health(sockets)
            assert np.allclose(_answers(sockets), expected(tmp_path / "m1.onnx", X), atol=1e-5)
            assert _blobs(state) == []
        applier.apply_shadow(fleet.desired(active, signed, policy))
        wait_until(lambda: _running(sockets), 20, "the signed candidate running")
        assert applier.shadow_checks() == []
    finally:
        applier.close()


def test_a_candidate_with_other_inputs_is_reported_by_its_runner(
    fleet: Fleet, tmp_path: Path, sockets: Path
) -> None:
    state = tmp_path / "state"
    active = fleet.push(1, "1.0")
    wide = affine(tmp_path / "wide.onnx", inputs=6, outputs=3, seed=5)
    [pushed] = push_model(fleet.client, wide, REPO, "wide")
    candidate = ModelRef(
        name="m",
        reference=f"{fleet.registry.host}/{REPO}@{pushed.digest}",
        digest=pushed.digest,
        origin=fleet.registry.url,
    )
    applier = SlotApplier(state, sockets, lambda scope: "", threads=1)
    try:
        applier.apply(fleet.desired(active))
        applier.apply_shadow(fleet.desired(active, candidate))
        wait_until(lambda: applier.shadow_checks() != [], 20, "the runner's refusal")
        [check] = applier.shadow_checks()
        assert "rollout-4" in check.detail and "input 'x' has shape" in check.detail
        assert np.allclose(_answers(sockets), expected(tmp_path / "m1.onnx", X), atol=1e-5)
    finally:
        applier.close()
