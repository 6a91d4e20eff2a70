"""Prometheus metrics: enrolments by outcome, requests by endpoint and status, latency
histograms, rate-limit refusals by endpoint, devices by state, results stored and
each device's result lag and buffer, rollouts by state, their devices per wave and
outcome, and how long waves take.

With several worker processes, prometheus-client's multiprocess mode is used
(``PROMETHEUS_MULTIPROC_DIR``, set by ``edgefleet controller serve``), so a scrape
answered by any worker covers all of them. Devices by state and their buffers are read from
the database at scrape time, so they are right whichever worker answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgefleet.controller.buffers import DeviceBuffer


class _DevicesByState(Collector):
    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self._count = count_by_state

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily(
            "edgefleet_devices", "Devices by lifecycle state", labels=["state"]
        )
        for state, n in sorted(self._count().items()):
            family.add_metric([state], n)
        yield family


class _DeviceBuffers(Collector):
    """Per device, from its last status: one series per device (and drop reason)."""

    def __init__(self, buffers: Callable[[], Sequence[DeviceBuffer]]) -> None:
        self._buffers = buffers

    def collect(self):  # type: ignore[no-untyped-def]
        lag = GaugeMetricFamily(
            "edgefleet_results_lag_seconds",
            "Age of the device's oldest result the controller does not hold yet",
            labels=["device"],
        )
        depth = GaugeMetricFamily(
            "edgefleet_buffer_depth", "Results waiting in the device's buffer", labels=["device"]
        )
        drops = GaugeMetricFamily(
            "edgefleet_buffer_drops",
            "Results the device's buffer dropped, by reason (its policy when full)",
            labels=["device", "reason"],
        )
        for b in self._buffers():
            lag.add_metric([b.device_id], b.lag_seconds)
            depth.add_metric([b.device_id], b.depth)
            for reason, n in sorted(b.drops.items()):
                drops.add_metric([b.device_id, reason], n)
        yield from (lag, depth, drops)


@dataclass(frozen=True)
class RolloutCounts:
    by_state: dict[str, int]
    """Rollouts per state."""
    devices: list[tuple[int, int, str, int]]
    """(rollout, wave, outcome, devices) of running and paused rollouts."""


class _Rollouts(Collector):
    """Read from the database at scrape time, like devices by state."""

    def __init__(self, counts: Callable[[], RolloutCounts]) -> None:
        self._counts = counts

    def collect(self):  # type: ignore[no-untyped-def]
        found = self._counts()
        states = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
        for state, n in sorted(found.by_state.items()):
            states.add_metric([state], n)
        devices = GaugeMetricFamily(
            "edgefleet_rollout_devices",
            "Devices of running and paused rollouts, per wave and outcome",
            labels=["rollout", "wave", "outcome"],
        )
        for rollout, wave, outcome, n in found.devices:
            devices.add_metric([str(rollout), str(wave), outcome], n)
        yield from (states, devices)


DriftGauges = tuple[Sequence[tuple[str, str, float]], dict[str, int]]
"""(site, model, worst PSI of its latest windows) and device-model pairs per level."""


class _Drift(Collector):
    """Read from the database at scrape time (``services/drift.py``)."""

    def __init__(self, gauges: Callable[[], DriftGauges]) -> None:
        self._gauges = gauges

    def collect(self):  # type: ignore[no-untyped-def]
        worst, levels = self._gauges()
        psi = GaugeMetricFamily(
            "edgefleet_drift_psi",
            "Worst PSI of the latest drift window of a model at a site (devices summed)",
            labels=["site", "model"],
        )
        for site, model, value in worst:
            psi.add_metric([site, model], value)
        level = GaugeMetricFamily(
            "edgefleet_drift_level",
            "Device-model pairs whose latest drift window reads ok, investigate or act",
            labels=["level"],
        )
        for name, n in levels.items():
            level.add_metric([name], n)
        yield from (psi, level)


ShadowGauges = Sequence[tuple[str, str, float | None, float | None, int]]
"""(model, key, top-1 agreement, mean absolute difference, compared inferences)."""


class _Shadow(Collector):
    """Read from the database at scrape time (``services/shadow.py``): one series per
    model and comparison key, never per device."""

    def __init__(self, gauges: Callable[[], ShadowGauges]) -> None:
        self._gauges = gauges

    def collect(self):  # type: ignore[no-untyped-def]
        agreement = GaugeMetricFamily(
            "edgefleet_shadow_agreement",
            "Top-1 agreement of shadow candidates with the active model, last 6 hours "
            "(key: parent or rollout-<id>)",
            labels=["model", "key"],
        )
        mad = GaugeMetricFamily(
            "edgefleet_shadow_mad",
            "Mean absolute difference of shadow candidates' outputs, last 6 hours",
            labels=["model", "key"],
        )
        compared = GaugeMetricFamily(
            "edgefleet_shadow_compared",
            "Inferences compared in shadow, last 6 hours",
            labels=["model", "key"],
        )
        for model, key, ratio, diff, n in self._gauges():
            if ratio is not None:
                agreement.add_metric([model, key], ratio)
            if diff is not None:
                mad.add_metric([model, key], diff)
            compared.add_metric([model, key], n)
        yield from (agreement, mad, compared)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        count_by_state: Callable[[], dict[str, int]],
        buffers: Callable[[], Sequence[DeviceBuffer]] = list,
        rollouts: Callable[[], RolloutCounts] = lambda: RolloutCounts({}, []),
        drift: Callable[[], DriftGauges] = lambda: ([], {}),
        shadow: Callable[[], ShadowGauges] = list,
    ) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.enrolments = Counter(
            "edgefleet_enrolments",
            "Enrolment requests by outcome",
            ["outcome"],
            registry=self._registry,
        )
        self.requests = Counter(
            "edgefleet_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self._registry,
        )
        self.latency = Histogram(
            "edgefleet_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self._registry,
        )
        self.rate_limited = Counter(
            "edgefleet_rate_limited",
            "Requests refused by a per-client rate limit (429), by endpoint",
            ["endpoint"],
            registry=self._registry,
        )
        self.gitops_commits = Counter(
            "edgefleet_gitops_commits",
            "Commits written to the fleet repositories",
            registry=self._registry,
        )
        self.gitops_failures = Counter(
            "edgefleet_gitops_failures",
            "Failed writes or pushes of the fleet repositories (each is retried)",
            registry=self._registry,
        )
        self.gitops_seconds = Histogram(
            "edgefleet_gitops_write_duration_seconds",
            "Time to read the intent and write the fleet repositories, per write",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self._registry,
        )
        self.registry_tokens = Counter(
            "edgefleet_registry_tokens",
            "Registry tokens issued, by caller (operator, device) and whether they may write",
            ["caller", "write"],
            registry=self._registry,
        )
        self.results_stored = Counter(
            "edgefleet_results_stored", "Results stored (new keys)", registry=self._registry
        )
        self.results_duplicates = Counter(
            "edgefleet_results_duplicates",
            "Results sent again that the controller already held (same payload)",
            registry=self._registry,
        )
        self.results_refused = Counter(
            "edgefleet_results_refused",
            "Results refused: their key was held with another payload (kept aside)",
            registry=self._registry,
        )
        self.results_pruned = Counter(
            "edgefleet_results_pruned",
            "Results deleted for being older than results_retention_days",
            registry=self._registry,
        )
        self.results_skipped = Counter(
            "edgefleet_results_skipped",
            "Result sequences devices declared they will never send, by reason",
            ["reason"],
            registry=self._registry,
        )
        self.gc_pause = Histogram(
            "edgefleet_gc_pause_seconds",
            "Garbage collections of the controller's workers, by generation: every request "
            "of the worker waits for one",
            ["generation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self._registry,
        )
        self.rollout_wave_seconds = Histogram(
            "edgefleet_rollout_wave_duration_seconds",
            "Time from a wave's start to its gates passing",
            buckets=(1, 10, 30, 60, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 86400),
            registry=self._registry,
        )
        self._devices = _DevicesByState(count_by_state)
        self._buffers = _DeviceBuffers(buffers)
        self._rollouts = _Rollouts(rollouts)
        self._drift = _Drift(drift)
        self._shadow = _Shadow(shadow)

    def render(self) -> bytes:
        if self._multiprocess:
            scrape = CollectorRegistry()
            multiprocess.MultiProcessCollector(scrape)
        else:
            scrape = CollectorRegistry()
            scrape.register(_Forward(self._registry))
        scrape.register(self._devices)
        scrape.register(self._buffers)
        scrape.register(self._rollouts)
        scrape.register(self._drift)
        scrape.register(self._shadow)
        return generate_latest(scrape)


class _Forward(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self):  # type: ignore[no-untyped-def]
        yield from self._registry.collect()
