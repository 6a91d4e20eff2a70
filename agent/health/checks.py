"""One function per check type; each returns (ok, detail, evidence) or raises.

The suite (``suite.py``) times them, holds them to their timeouts and turns an
exception into a failed result, so a check here says only what it looked at.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.health import tensors
from edgefleet.agent.health.policy import CheckSpec
from edgefleet.agent.runner.supervisor import Runner
from edgefleet.errors import ConfigError
from edgefleet.models.probe import Probe
from edgefleet.percentile import percentile

Outcome = tuple[bool, str, dict[str, Any]]
OUTPUT_TAIL = 2048
"""Characters of a command's stdout and stderr kept as evidence."""


@dataclass(frozen=True)
class Candidate:
    """One model of the candidate slot, served by its own runner on a candidate socket."""

    name: str
    digest: str
    runner: Runner
    probe: Probe | None


@dataclass(frozen=True)
class Target:
    candidates: list[Candidate]
    env: dict[str, str]
    """Extra environment of ``exec`` checks: which slot, revision and sockets to check."""


def model_load(spec: CheckSpec, target: Target) -> Outcome:
    """Each runner answers ``/model`` with the file the slot holds."""
    seen: dict[str, Any] = {}
    wrong = []
    for c in target.candidates:
        info = c.runner.model_info()
        seen[c.name] = info
        if info["model"]["digest"] != c.digest:
            wrong.append(f"{c.name} serves {info['model']['digest']}, not {c.digest}")
    if wrong:
        return False, "; ".join(wrong), seen
    return True, f"{len(target.candidates)} model(s) loaded", seen


def probe(spec: CheckSpec, target: Target) -> Outcome:
    """Each model gives its golden probe's outputs within the probe's tolerance."""
    problems: list[str] = []
    evidence: dict[str, Any] = {}
    for c in target.candidates:
        if c.probe is None:
            evidence[c.name] = "no golden probe in the artifact: not checked"
            continue
        answer = c.runner.predict(tensors.probe_inputs(c.probe))
        found, evidence[c.name] = tensors.compare(c.probe, answer["outputs"])
        problems += [f"{c.name}: {p}" for p in found]
    if problems:
        return False, "golden probe differs: " + "; ".join(problems), evidence
    return True, "golden probe within tolerance", evidence


def latency(spec: CheckSpec, target: Target) -> Outcome:
    """Each model's p95 round trip over ``samples`` calls is within ``p95_ms``."""
    slow: list[str] = []
    evidence: dict[str, Any] = {}
    for c in target.candidates:
        inputs = tensors.probe_inputs(c.probe) if c.probe is not None else _zeros(c.runner)
        samples = []
        for _ in range(spec.samples):
            started = time.perf_counter()
            c.runner.predict(inputs)
            samples.append((time.perf_counter() - started) * 1000)
        p95 = percentile(samples, 95)
        evidence[c.name] = {
            "p95_ms": round(p95, 3),
            "p50_ms": round(percentile(samples, 50), 3),
            "budget_ms": spec.p95_ms,
            "samples_ms": [round(s, 3) for s in samples],
        }
        if p95 > spec.p95_ms:
            slow.append(f"{c.name} p95 {p95:.2f} ms > {spec.p95_ms:g} ms")
    if slow:
        return False, "too slow: " + "; ".join(slow), evidence
    return True, f"p95 within {spec.p95_ms:g} ms", evidence


def http(spec: CheckSpec, target: Target) -> Outcome:
    """``GET url`` answers ``expect_status``."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(spec.url, timeout=spec.timeout_seconds) as resp:
            status, body = resp.status, resp.read(OUTPUT_TAIL)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(OUTPUT_TAIL)
    except (OSError, ValueError) as exc:
        return False, f"GET {spec.url}: {exc}", {"url": spec.url}
    evidence = {
        "url": spec.url,
        "status": status,
        "body": body.decode(errors="replace"),
        "ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if status != spec.expect_status:
        return False, f"GET {spec.url} answered {status}, expected {spec.expect_status}", evidence
    return True, f"GET {spec.url} answered {status}", evidence


def exec_(spec: CheckSpec, target: Target) -> Outcome:
    """``command`` exits 0 within its timeout; it sees ``EDGEFLEET_*`` variables naming
    the candidate (slot, revision, sockets, runner pids)."""
    try:
        done = subprocess.run(
            spec.command,
            capture_output=True,
            timeout=spec.timeout_seconds,
            env={**os.environ, **target.env},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        return (
            False,
            f"{spec.command[0]} ran longer than {spec.timeout_seconds:g} s",
            {
                "command": list(spec.command),
                "stdout": _tail(exc.stdout),
                "stderr": _tail(exc.stderr),
            },
        )
    except OSError as exc:
        raise ConfigError(f"exec check cannot run {spec.command[0]}: {exc}") from exc
    evidence = {
        "command": list(spec.command),
        "exit_code": done.returncode,
        "stdout": _tail(done.stdout),
        "stderr": _tail(done.stderr),
    }
    if done.returncode != 0:
        return False, f"{spec.command[0]} exited {done.returncode}", evidence
    return True, f"{spec.command[0]} exited 0", evidence


CHECKS: dict[str, Callable[[CheckSpec, Target], Outcome]] = {
    "model_load": model_load,
    "probe": probe,
    "latency": latency,
    "http": http,
    "exec": exec_,
}


def _zeros(runner: Runner) -> dict[str, Any]:
    """Zero inputs shaped from the model's signature (free dimensions 1): the latency of
    a model whose artifact carries no probe."""
    inputs = {}
    for spec in runner.model_info()["inputs"]:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
        zero = False if spec["type"] == "tensor(bool)" else 0
        inputs[spec["name"]] = tensors.nested([zero] * math.prod(shape), shape)
    return inputs


def _tail(data: bytes | str | None) -> str:
    if data is None:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return text[-OUTPUT_TAIL:]
