"""Staged sets for the slot tests: models, probes and desired state, as staging leaves them."""

from __future__ import annotations

from pathlib import Path

from edgefleet.agent.slots.manifest import build_manifest


def make_set(folder: Path, tag: str, extra: dict[str, bytes] | None = None) -> dict[str, str]:
    """Write a set into ``folder``; its manifest."""
    files = {
        "models/detector.onnx": f"onnx weights {tag} ".encode() * 700,
        "models/detector.probe.json": f'{{"expected": "{tag}"}}'.encode(),
        "desired.json": f'{{"revision": "{tag}"}}'.encode(),
        **(extra or {}),
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return build_manifest(folder)
