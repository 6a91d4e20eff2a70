"""The set a slot holds: one ``.onnx`` file per model, its golden probe, ``set.json``.

    <slot>/set.json                 revision and, per model, file, digest, version, probe
    <slot>/<name>.onnx
    <slot>/<name>.probe.json        when the artifact has a golden probe
    <slot>/<name>.reference.json    when it has a drift reference and the profile
                                    monitors drift (``drift`` in set.json: the policy)

Staging links the verified blobs into a folder (a copy across file systems) and
builds the manifest the slot backend writes and verifies: every file by digest,
``set.json`` included, so what a runner later loads is exactly what was pulled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.slots.manifest import build_manifest
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.models.probe import Probe

SET_FILE = "set.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A model name becomes a file and a socket name: no slashes, no leading dot."""


class StagingError(EdgefleetError):
    """A staged file is not what was pulled; nothing was written to a slot."""

    default_code = "staging"


@dataclass(frozen=True)
class StagedModel:
    """A pulled, verified model file and what the slot keeps beside it."""

    name: str
    path: Path
    digest: str
    version: str = ""
    reference: str = ""
    probe: bytes | None = None
    drift_reference: bytes | None = None
    drift: dict[str, Any] | None = None
    """The profile's drift policy (``DriftPolicy``), kept with the reference."""


@dataclass(frozen=True)
class SetModel:
    name: str
    file: str
    digest: str
    version: str
    reference: str
    probe_file: str | None
    reference_file: str | None = None
    """The drift reference, for the runner's sketch; None: no drift monitoring."""
    drift: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelSet:
    revision: int
    models: list[SetModel]

    def probe(self, folder: Path, model: SetModel) -> Probe | None:
        if model.probe_file is None:
            return None
        return Probe.from_bytes((folder / model.probe_file).read_bytes())


def stage(models: list[StagedModel], revision: int, folder: Path) -> dict[str, str]:
    """Fill ``folder`` (emptied first) with the set; returns its manifest.

    The manifest's digests are computed from the staged files, and each model's must be
    the digest it was pulled by: a blob changed on disk since its pull never reaches a
    slot."""
    if not models:
        raise ConfigError(f"revision {revision} names no models: a slot never holds an empty set")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    entries = []
    for m in models:
        if not NAME.match(m.name):
            raise ConfigError(f"model name {m.name!r} cannot name a file; use [A-Za-z0-9._-]")
        file = f"{m.name}.onnx"
        _link(m.path, folder / file)
        probe_file = None
        if m.probe is not None:
            probe_file = f"{m.name}.probe.json"
            (folder / probe_file).write_bytes(m.probe)
        reference_file = None
        if m.drift_reference is not None and m.drift is not None and m.drift.get("enabled"):
            reference_file = f"{m.name}.reference.json"
            (folder / reference_file).write_bytes(m.drift_reference)
        drift = m.drift if reference_file is not None else None
        entries.append(
            SetModel(
                m.name, file, m.digest, m.version, m.reference, probe_file, reference_file, drift
            )
        )
    doc = {"revision": revision, "models": [asdict(e) for e in entries]}
    (folder / SET_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    manifest = build_manifest(folder)
    for entry in entries:
        if manifest[entry.file] != entry.digest:
            raise StagingError(
                f"staging {entry.name}: the file hashes to {manifest[entry.file]}, not "
                f"{entry.digest} it was pulled as; the blob store was changed on disk"
            )
    return manifest


def load_set(folder: Path) -> ModelSet:
    """The set in a slot's folder (the backend verified it when it was written)."""
    doc = json.loads((folder / SET_FILE).read_text())
    return ModelSet(doc["revision"], [SetModel(**m) for m in doc["models"]])


def _link(source: Path, target: Path) -> None:
    """A hard link costs no copy; across file systems (EXDEV) the file is copied."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
