"""The run's figures as one JSON document: the summary (requests/s and p50/p95/p99 per
endpoint, errors by kind, shed load, the simulator's CPU), the series per bucket
(throughput, latency percentiles, errors, the simulator's and the controller's CPU and
the controller's RSS) and, after an outage, the storm (:func:`storm`)."""

from __future__ import annotations

import json
import resource
from collections import Counter
from pathlib import Path
from typing import Any

from edgefleet.simulate.config import warmup_seconds
from edgefleet.simulate.run import Outcome
from edgefleet.simulate.stats import percentiles_ms

ENROL = "POST /enrol"


def build(out: Outcome) -> dict[str, Any]:
    """The report; every latency in milliseconds, every rate per second."""
    cfg, rec = out.config, out.recorder
    endpoints: dict[str, Any] = {}
    # The cycles in flight at the end finish after the duration: their time counts too.
    loop_seconds = out.run_seconds + out.drain_seconds
    for name, samples in sorted(rec.latencies.items()):
        seconds = out.enrol_seconds if name == ENROL else loop_seconds
        endpoints[name] = {
            "requests": len(samples),
            "per_second": round(len(samples) / seconds, 2) if seconds else None,
            **percentiles_ms(samples),
            "errors": rec.errors_by_endpoint.get(name, 0),
            "shed": rec.shed.get(name, 0),
        }
    for name in set(rec.errors_by_endpoint) | set(rec.shed):
        endpoints.setdefault(
            name,
            {
                "requests": 0,
                "per_second": 0.0,
                **percentiles_ms([]),
                "errors": rec.errors_by_endpoint.get(name, 0),
                "shed": rec.shed.get(name, 0),
            },
        )
    loop = [s for name, s in rec.latencies.items() if name != ENROL]
    loop_requests = sum(len(s) for s in loop)
    all_loop = [x for s in loop for x in s]
    kinds = Counter(d.kind for d in out.devices)
    enrolled = [d for d in out.devices if d.device_id is not None]
    return {
        "config": {
            "url": cfg.url,
            "devices": cfg.devices,
            "interval_s": cfg.interval,
            "duration_s": cfg.duration,
            "site": cfg.site,
            "profile": cfg.profile,
            "seed": cfg.seed,
            "connections": cfg.connections,
            "enrol_concurrency": cfg.enrol_concurrency,
            "timeout_s": cfg.timeout,
            "batch": cfg.batch,
            "bucket_s": cfg.bucket,
            "mix": dict(cfg.mix.items()),
            "controller_pid": cfg.controller_pid,
        },
        "registration_token": out.token_kid,
        "devices": {
            "requested": cfg.devices,
            "enrolled": len(enrolled),
            "by_behaviour": dict(sorted(kinds.items())),
            "reports": sum(d.reports for d in out.devices),
            "results_acked": sum(d.acked for d in out.devices),
            "updates_reported": sum(d.updates_reported for d in out.devices),
        },
        "enrol_seconds": round(out.enrol_seconds, 3),
        "run_seconds": round(out.run_seconds, 3),
        "drain_seconds": round(out.drain_seconds, 3),
        "requests_per_second": round(loop_requests / loop_seconds, 2) if loop_seconds else None,
        "latency": percentiles_ms(all_loop),
        "pool_wait": percentiles_ms(rec.pool_wait),
        "unsent_at_end": rec.unsent,
        "resent_on_closed_connection": rec.resent,
        "endpoints": endpoints,
        "errors": dict(sorted(rec.errors.items())),
        "error_count": rec.error_count,
        "first_errors": dict(sorted(rec.first_error.items())),
        "shed": sum(rec.shed.values()),
        "simulator_cpu_seconds": round(out.sim_cpu_s, 3),
        "simulator_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "controller": _controller(out),
        "steady": steady(out),
        "storm": storm(out),
        "series": series(out),
        "device_list": [
            {
                "id": d.device_id,
                "serial": d.serial,
                "behaviour": d.kind,
                "enrolled_at": d.enrolled_at,
                "reports": d.reports,
                "results_acked": d.acked,
                "updates_reported": d.updates_reported,
            }
            for d in out.devices
        ],
    }


def _controller(out: Outcome) -> dict[str, Any] | None:
    points = [s for s in out.samples if s.controller_cpu_s is not None]
    if not points:
        return None
    rss = [s.controller_rss_bytes or 0 for s in points]
    return {
        "source": f"/proc, process {out.config.controller_pid} and its descendants",
        "cpu_seconds": round(
            (points[-1].controller_cpu_s or 0) - (points[0].controller_cpu_s or 0), 3
        ),
        "rss_start_mb": round(rss[0] / 2**20, 1),
        "rss_end_mb": round(rss[-1] / 2**20, 1),
        "rss_max_mb": round(max(rss) / 2**20, 1),
        "processes": points[-1].controller_processes,
        "per_process": _per_process(
            points[0].controller_each or {}, points[-1].controller_each or {}
        ),
    }


def _per_process(
    first: dict[int, tuple[float, int]], last: dict[int, tuple[float, int]]
) -> list[dict[str, Any]]:
    """CPU over the run and RSS at its end for each process: the supervisor and every
    worker, to see whether the workers share the load."""
    return [
        {
            "pid": pid,
            "cpu_seconds": round(cpu - first.get(pid, (0.0, 0))[0], 3),
            "rss_mb": round(rss / 2**20, 1),
        }
        for pid, (cpu, rss) in sorted(last.items())
    ]


def steady(out: Outcome) -> dict[str, Any]:
    """The figures after warm-up (what a soak is judged by): requests/s, percentiles and
    errors of the requests made then, the controller's RSS at its start and end and its
    CPU meanwhile. Empty figures when the run ended before warm-up did."""
    rec, step = out.recorder, out.config.bucket
    begins = out.enrol_seconds + warmup_seconds(out.config)
    first = int(-(-begins // step))  # the first whole bucket after warm-up
    last = int((out.enrol_seconds + out.run_seconds) // step)  # the last whole one
    buckets = [rec.buckets[i] for i in range(first, last) if i in rec.buckets]
    latencies = [x for b in buckets for x in b.latencies]
    seconds = (last - first) * step
    samples = [s for s in out.samples if first * step - 1e-6 <= s.t <= last * step + 1e-6]
    controller: dict[str, Any] = {"rss_start_mb": None, "rss_end_mb": None, "cpu_pct": None}
    measured = [s for s in samples if s.controller_rss_bytes is not None]
    if len(measured) >= 2:
        a, b = measured[0], measured[-1]
        controller = {
            "rss_start_mb": round((a.controller_rss_bytes or 0) / 2**20, 1),
            "rss_end_mb": round((b.controller_rss_bytes or 0) / 2**20, 1),
            "cpu_pct": round(
                ((b.controller_cpu_s or 0) - (a.controller_cpu_s or 0)) / (b.t - a.t) * 100, 1
            )
            if b.t > a.t
            else None,
        }
    return {
        "warmup_s": warmup_seconds(out.config),
        "from_s": round(first * step, 3),
        "to_s": round(last * step, 3),
        "requests": len(latencies),
        "per_second": round(len(latencies) / seconds, 2) if seconds > 0 else None,
        **percentiles_ms(latencies),
        "errors": sum(b.errors for b in buckets),
        "shed": sum(b.shed for b in buckets),
        "controller": controller,
    }


STORM_BUDGET_INTERVALS = 3
"""Every device back from an outage has reported within this many intervals."""


def storm(out: Outcome) -> dict[str, Any] | None:
    """The reconnect storm, from the fleet's return until every online device had a status
    answered: how long that took against its budget (three intervals), the load the
    controller shed (429/503 with Retry-After, and the Retry-After it asked for), the
    errors (timeouts, lost connections: what shedding is there to prevent), the latency
    of what was answered, new connections, and whether the controller stayed up."""
    s, cfg = out.storm, out.config
    if s is None:
        return None
    w = s.window
    budget = STORM_BUDGET_INTERVALS * cfg.interval
    everyone = bool(s.reported) and len(s.reported) == s.online
    last = s.reported[-1] if everyone else None
    seconds = (w.closed or w.opened) - w.opened if w else 0.0
    retry = sorted(w.retry_after) if w else []
    back = s.back_at
    end = back + seconds
    usage = _usage(sorted(out.samples, key=lambda p: p.t), back, end) if seconds > 0 else {}
    rss = [
        p.controller_rss_bytes
        for p in out.samples
        if p.controller_rss_bytes is not None and back - cfg.bucket <= p.t <= end + cfg.bucket
    ]

    def quantiles(values: list[float]) -> dict[str, float | None]:
        got = percentiles_ms(values)  # seconds in, milliseconds out
        return {
            k.replace("_ms", "_s"): None if v is None else round(v / 1000, 3)
            for k, v in got.items()
        }

    return {
        "outage_at_s": cfg.outage_at,
        "outage_for_s": cfg.outage_for,
        "down_at_s": round(s.down_at, 3),
        "back_at_s": round(back, 3),
        "reauth": cfg.storm_reauth,
        "devices_online": s.online,
        "reported": len(s.reported),
        "missing": s.online - len(s.reported),
        "all_reported_after_s": round(last, 3) if last is not None else None,
        "budget_s": budget,
        "within_budget": last is not None and last <= budget,
        "time_to_report": quantiles(s.reported),
        "window_s": round(seconds, 3),
        "requests": len(w.latencies) if w else 0,
        "per_second": round(len(w.latencies) / seconds, 1) if w and seconds > 0 else None,
        "latency": percentiles_ms(w.latencies if w else []),
        "shed": sum(w.shed.values()) if w else 0,
        "shed_by_endpoint": dict(sorted(w.shed.items())) if w else {},
        "retry_after_s": {
            "min": retry[0] if retry else None,
            "mean": round(sum(retry) / len(retry), 2) if retry else None,
            "max": retry[-1] if retry else None,
        },
        "errors": sum(w.errors.values()) if w else 0,
        "errors_by_kind": dict(sorted(w.errors.items())) if w else {},
        "first_errors": dict(sorted(w.first_error.items())) if w else {},
        "connections": {"pool": s.pool, "opened": s.opened},
        "controller": {
            "alive_at_end": s.controller_alive,
            "answering_at_end": s.controller_answering,
            "processes_before": s.processes_before,
            "processes_after": s.processes_after,
            "cpu_pct": usage.get("controller_cpu_pct"),
            "rss_max_mb": round(max(rss) / 2**20, 1) if rss else None,
        },
        "simulator_cpu_pct": usage.get("sim_cpu_pct"),
    }


def series(out: Outcome) -> list[dict[str, Any]]:
    """One point per bucket: requests and their percentiles in that bucket, and CPU
    (percent of one core over the bucket) and RSS from the samples nearest to it."""
    rec, step = out.recorder, out.config.bucket
    last = max([*rec.buckets, int(out.samples[-1].t / step) if out.samples else 0])
    points = []
    samples = sorted(out.samples, key=lambda s: s.t)
    for i in range(last + 1):
        b = rec.buckets.get(i)
        count = len(b.latencies) if b else 0
        point: dict[str, Any] = {
            "t": round(i * step, 3),
            "requests": count,
            "per_second": round(count / step, 2),
            **(percentiles_ms(b.latencies) if b else percentiles_ms([])),
            "by_endpoint": dict(b.by_endpoint) if b else {},
            "errors": b.errors if b else 0,
            "shed": b.shed if b else 0,
        }
        point.update(_usage(samples, i * step, (i + 1) * step))
        points.append(point)
    return points


def _usage(samples: list[Any], t0: float, t1: float) -> dict[str, Any]:
    """CPU % between the samples that bracket [t0, t1], RSS at its end."""
    before = [s for s in samples if s.t <= t0 + 1e-6]
    after = [s for s in samples if s.t >= t1 - 1e-6]
    if not before or not after or after[0].t <= before[-1].t:
        return {"sim_cpu_pct": None, "controller_cpu_pct": None, "controller_rss_mb": None}
    a, b = before[-1], after[0]
    dt = b.t - a.t
    ctl_cpu = (
        round((b.controller_cpu_s - a.controller_cpu_s) / dt * 100, 1)
        if a.controller_cpu_s is not None and b.controller_cpu_s is not None
        else None
    )
    return {
        "sim_cpu_pct": round((b.sim_cpu_s - a.sim_cpu_s) / dt * 100, 1),
        "controller_cpu_pct": ctl_cpu,
        "controller_rss_mb": round(b.controller_rss_bytes / 2**20, 1)
        if b.controller_rss_bytes is not None
        else None,
    }


def write(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")
