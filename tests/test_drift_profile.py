"""The profile's ``drift`` section: validated where profiles are, carried to devices in
the desired state only when set (a device without it keeps its ETag across the upgrade),
and kept with the reference in the slot only when the profile monitors drift."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from edgefleet import profilespec
from edgefleet.agent.k3s.desired import desired_from
from edgefleet.agent.update.modelset import StagedModel, load_set, stage
from edgefleet.controller.gitops.model import Revision
from edgefleet.controller.gitops.render import _desired
from edgefleet.wire import DesiredState, DriftPolicy


def problems(drift: object) -> list[tuple[str, str]]:
    return profilespec.errors({"name": "vision", "drift": drift})


def test_a_drift_section_with_defaults_and_thresholds_is_accepted() -> None:
    assert problems({}) == []
    assert problems({"window_seconds": 60, "sample_rate": 0.5, "thresholds": {"act": 0.4}}) == []
    policy = DriftPolicy.from_profile({"drift": {"thresholds": {"act": 0.4}}})
    assert policy is not None
    assert (policy.window_seconds, policy.investigate, policy.act) == (3600, 0.1, 0.4)


def test_bad_drift_settings_are_refused_by_path() -> None:
    assert [p for p, _ in problems({"window_seconds": 0})] == ["/drift/window_seconds"]
    assert [p for p, _ in problems({"sample_rate": 1.5})] == ["/drift/sample_rate"]
    assert [p for p, _ in problems({"sample_rate": 0})] == ["/drift/sample_rate"]
    assert [p for p, _ in problems({"windows": 60})] == ["/drift/windows"]  # a typo is not kept
    [(where, why)] = problems({"thresholds": {"investigate": 0.3}})  # act defaults to 0.25
    assert where == "/drift/thresholds" and "must be below act (0.25)" in why


def test_a_desired_state_without_drift_has_the_body_it_had_before() -> None:
    """Neither section added since (drift, model signatures) appears when absent: an
    upgrade leaves every such device's ETag as it was."""
    plain = DesiredState(device_id="dev-1", interval_seconds=30)
    assert set(plain.body()) == {
        "device_id", "profile", "revision", "models", "config", "interval_seconds",
        "trust_bundle", "health", "results", "update_retries",
    }  # fmt: skip
    monitored = DesiredState(device_id="dev-1", interval_seconds=30, drift=DriftPolicy())
    body = json.loads(monitored.model_dump_json())
    assert body["drift"]["act"] == 0.25
    assert DesiredState.model_validate(body).drift == DriftPolicy()


def test_the_slot_keeps_the_reference_only_when_the_profile_monitors_drift(
    tmp_path: Path,
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx bytes")
    digest = "sha256:" + hashlib.sha256(b"onnx bytes").hexdigest()
    policy = DriftPolicy(window_seconds=60).model_dump(mode="json")
    for drift, kept in ((policy, True), (None, False), ({**policy, "enabled": False}, False)):
        folder = tmp_path / f"slot-{kept}-{drift is None}"
        staged = StagedModel("m", model, digest, drift_reference=b"{}", drift=drift)
        manifest = stage([staged], 3, folder)
        [entry] = load_set(folder).models
        assert (entry.reference_file is not None) is kept
        assert ("m.reference.json" in manifest) is kept  # verified with the slot's files
        assert (entry.drift == policy) is kept


def test_a_k3s_device_reads_the_drift_policy_from_its_configmap() -> None:
    """The fleet repository's desired-state ConfigMap carries ``drift`` when the profile
    has it (and only then), and the K3s-mode agent reads it as the device API gives it."""
    spec = {"models": [], "drift": {"window_seconds": 600, "thresholds": {"act": 0.3}}}
    rendered = yaml.safe_load(_desired(Revision("vision", 4, spec)))["data"]
    assert desired_from(rendered, "dev-1").drift == DriftPolicy(window_seconds=600, act=0.3)
    plain = yaml.safe_load(_desired(Revision("vision", 4, {"models": []})))["data"]
    assert "drift" not in plain and desired_from(plain, "dev-1").drift is None
