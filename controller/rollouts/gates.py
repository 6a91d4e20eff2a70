"""A wave's health gates, read when its bake ends: pure functions over counts and the
status reports of the devices that run the new revision."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgefleet.controller.rollouts.spec import Gates
from edgefleet.percentile import percentile


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str

    def public(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


def too_many_failures(gates: Gates, failed: int, accepted: int) -> Verdict | None:
    """Checked whenever a device fails, not only after the bake: a canary that rolled
    back stops the rollout at once. ``accepted``: failures an operator resumed past."""
    if failed - accepted > gates.max_failures:
        return Verdict(
            False,
            f"{failed - accepted} failed update(s), more than the {gates.max_failures} allowed",
        )
    return None


def wave_verdict(
    gates: Gates,
    succeeded: int,
    failed: int,
    inference: Iterable[dict[str, Any]],
) -> Verdict:
    """The wave's success ratio, then the p95 and error rate of the updated devices:
    the p95 gate reads the 95th percentile of their reported p95s, the error rate is
    weighted by each device's call count. Devices that served no call say nothing."""
    done = succeeded + failed
    ratio = succeeded / done if done else 1.0
    if ratio < gates.min_success_ratio:
        return Verdict(
            False,
            f"{succeeded} of {done} updates succeeded ({ratio:.0%}), below the "
            f"{gates.min_success_ratio:.0%} required",
        )
    notes = [f"{succeeded} of {done} updates succeeded"]
    stats = [s for s in inference if s.get("count")]
    if gates.max_p95_ms is not None:
        p95s = [float(s["p95_ms"]) for s in stats if s.get("p95_ms") is not None]
        if p95s:
            p95 = percentile(p95s, 95)
            if p95 > gates.max_p95_ms:
                return Verdict(
                    False,
                    f"inference p95 {p95:g} ms over {len(p95s)} device(s), above the "
                    f"{gates.max_p95_ms:g} ms allowed",
                )
            notes.append(f"p95 {p95:g} ms")
        else:
            notes.append("no device reported inference latency")
    if gates.max_error_rate is not None:
        calls = sum(int(s["count"]) for s in stats)
        errors = sum(int(s["count"]) * float(s.get("error_rate") or 0) for s in stats)
        if calls:
            rate = errors / calls
            if rate > gates.max_error_rate:
                return Verdict(
                    False,
                    f"inference error rate {rate:.2%} over {calls} call(s), above the "
                    f"{gates.max_error_rate:.2%} allowed",
                )
            notes.append(f"error rate {rate:.2%}")
        else:
            notes.append("no device reported inference calls")
    return Verdict(True, "; ".join(notes))
