"""A whole run: check the operator token, create the run's registration token, enrol
the fleet (bounded concurrency), run every device's loop for the duration while a
sampler keeps the series (throughput, latency, the controller's CPU and RSS), then
hand the measurements to :mod:`edgefleet.simulate.report`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgefleet.simulate import procstat
from edgefleet.simulate.behaviours import assign
from edgefleet.simulate.config import SimConfig, check
from edgefleet.simulate.device import SimDevice, new_serial
from edgefleet.simulate.operator import Operator
from edgefleet.simulate.stats import Recorder
from edgefleet.simulate.wire import CallFailed, Wire

Progress = Callable[[str], None]


@dataclass
class Sample:
    """One point of the series besides the request buckets: CPU and memory."""

    t: float
    sim_cpu_s: float
    controller_cpu_s: float | None = None
    controller_rss_bytes: int | None = None
    controller_processes: int | None = None
    controller_each: dict[int, tuple[float, int]] | None = None


@dataclass
class Outcome:
    """Everything measured; :func:`edgefleet.simulate.report.build` turns it into JSON."""

    config: SimConfig
    recorder: Recorder
    devices: list[SimDevice]
    samples: list[Sample] = field(default_factory=list)
    enrol_seconds: float = 0.0
    run_seconds: float = 0.0
    """The duration asked for: rates are per second of it."""
    drain_seconds: float = 0.0
    """How long the cycles in flight at the end took to finish (slow devices)."""
    sim_cpu_s: float = 0.0
    token_kid: str = ""


def run_sync(cfg: SimConfig, progress: Progress = lambda _: None) -> Outcome:
    """:func:`simulate` on uvloop where it is installed (it comes with the controller's
    uvicorn[standard]; the event loop's own overhead is a good part of the simulator's
    CPU), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(simulate(cfg, progress))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(simulate(cfg, progress))


def ssl_context(cfg: SimConfig) -> ssl.SSLContext:
    if cfg.ca_file is not None:
        return ssl.create_default_context(cafile=str(cfg.ca_file))
    return ssl.create_default_context()


async def _sampler(cfg: SimConfig, out: Outcome, stop: asyncio.Event) -> None:
    """Every bucket: the simulator's CPU and, with a pid, the controller's CPU and RSS.

    /proc is read in a thread: a controller with many workers is a few dozen files, but
    the devices' timers must not wait on them."""
    start = out.recorder.start
    while True:
        point = Sample(time.monotonic() - start, procstat.own_cpu_seconds())
        if cfg.controller_pid is not None:
            proc = await asyncio.to_thread(procstat.sample, cfg.controller_pid)
            if proc is not None:
                point.controller_cpu_s = proc.cpu_seconds
                point.controller_rss_bytes = proc.rss_bytes
                point.controller_processes = proc.processes
                point.controller_each = proc.each
        out.samples.append(point)
        try:
            await asyncio.wait_for(stop.wait(), cfg.bucket)
            return
        except TimeoutError:
            continue


async def simulate(cfg: SimConfig, progress: Progress = lambda _: None) -> Outcome:
    """Run the simulation; ConfigError before anything is enrolled if it cannot start."""
    check(cfg)
    cpu_start = procstat.own_cpu_seconds()
    recorder = Recorder(cfg.bucket)
    wire = Wire(cfg.url, ssl_context(cfg), cfg.connections, cfg.timeout, recorder)
    out = Outcome(cfg, recorder, [])
    stop_sampling = asyncio.Event()
    sampler: asyncio.Task[None] | None = None
    try:
        operator = Operator(wire.session, cfg.url, cfg.token)
        await operator.check(cfg.profile)
        issued = await operator.registration_token(cfg.site, cfg.devices, cfg.profile)
        out.token_kid = issued["kid"]
        registration = issued["registration"]
        sampler = asyncio.create_task(_sampler(cfg, out, stop_sampling))
        kinds = assign(cfg.devices, cfg.mix, cfg.seed)
        tag = out.token_kid[-8:].lower()
        out.devices = [
            SimDevice(
                i,
                kind,
                new_serial(tag, i),
                random.Random(f"{cfg.seed}:{i}"),
                batch=cfg.batch,
                slow_delay=cfg.slow_delay,
            )
            for i, kind in enumerate(kinds)
        ]
        progress(f"enrolling {cfg.devices} devices at site {cfg.site!r}")
        started = time.monotonic()
        await _enrol_all(wire, out.devices, registration, cfg.enrol_concurrency)
        out.enrol_seconds = time.monotonic() - started
        enrolled = sum(d.device_id is not None for d in out.devices)
        progress(
            f"enrolled {enrolled}/{cfg.devices} in {out.enrol_seconds:.1f} s; running for "
            f"{cfg.duration:g} s at a {cfg.interval:g} s interval"
        )
        started = time.monotonic()
        stop_at = started + cfg.duration
        loops = [asyncio.create_task(d.run(wire, cfg.interval, stop_at)) for d in out.devices]
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        wire.stopping = True
        await asyncio.gather(*loops)  # in-flight cycles end within the request timeout
        out.run_seconds = cfg.duration
        out.drain_seconds = time.monotonic() - stop_at
        await operator.revoke(out.token_kid, cfg.timeout)
    finally:
        stop_sampling.set()
        if sampler is not None:
            await sampler
        await wire.close()
        out.sim_cpu_s = procstat.own_cpu_seconds() - cpu_start
    return out


async def _enrol_all(
    wire: Wire, devices: list[SimDevice], registration: dict[str, str], concurrency: int
) -> None:
    gate = asyncio.Semaphore(concurrency)
    token, controller_id = registration["token"], registration["controller_id"]

    async def one(device: SimDevice) -> None:
        async with gate:
            with contextlib.suppress(CallFailed):
                await device.enrol(wire, token, controller_id)

    await asyncio.gather(*(one(d) for d in devices))
