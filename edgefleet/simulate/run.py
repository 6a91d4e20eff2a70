"""A whole run: check the operator token, create the run's registration token, enrol
the fleet (bounded concurrency), run every device's loop for the duration while a
sampler keeps the series (throughput, latency, the controller's CPU and RSS), then
hand the measurements to :mod:`edgefleet.simulate.report`.

With ``--outage-at`` a reconnect storm: at that second every device falls silent and
the shared pool's connections are closed; ``--outage-for`` later the whole fleet comes
back at once on a pool of its own (``--storm-connections``), and the run measures the
storm (:class:`Storm`) until every online device has had a status answered."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgefleet import gctune
from edgefleet.simulate import procstat
from edgefleet.simulate.behaviours import assign
from edgefleet.simulate.config import SimConfig, check, storm_pool
from edgefleet.simulate.device import Outage, SimDevice, new_serial
from edgefleet.simulate.operator import Operator
from edgefleet.simulate.stats import Recorder, Window
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
class Storm:
    """What a reconnect storm measured; times in seconds from the recorder's start (the
    series' t) unless named otherwise."""

    down_at: float
    back_at: float
    pool: int
    """Connections the returning fleet could open at once."""
    online: int = 0
    """Devices expected back: enrolled and not of the offline kind."""
    reported: list[float] = field(default_factory=list)
    """Seconds from the return to each device's first answered status."""
    window: Window | None = None
    """From the return until the last device reported (or the run ended)."""
    opened: int = 0
    """New connections (TCP + TLS handshakes) during the window."""
    processes_before: int | None = None
    processes_after: int | None = None
    controller_alive: bool | None = None
    """The controller's process still ran at the end (None: no --controller-pid)."""
    controller_answering: bool = False
    """It answered ``GET /healthz`` at the end of the run."""


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
    storm: Storm | None = None


def run_sync(cfg: SimConfig, progress: Progress = lambda _: None) -> Outcome:
    """:func:`simulate` on uvloop where it is installed (it comes with the controller's
    uvicorn[standard]; the event loop's own overhead is a good part of the simulator's
    CPU), else on asyncio's loop. Its garbage collector is tuned as the controller's:
    a full collection of 20,000 devices' state would otherwise stall every request in
    flight, and the stall would be counted as the controller's latency."""
    gctune.tune()
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
    pool = storm_pool(cfg) if cfg.outage_at is not None else 0
    wire = Wire(cfg.url, ssl_context(cfg), cfg.connections, cfg.timeout, recorder, pool, cfg.seed)
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
        outage = None
        storm_task = None
        if cfg.outage_at is not None:
            down = started + cfg.outage_at
            outage = Outage(down, down + cfg.outage_for, cfg.storm_reauth)
            storm_task = asyncio.create_task(_storm(cfg, wire, out, outage, stop_at, progress))
        loops = [
            asyncio.create_task(d.run(wire, cfg.interval, stop_at, outage)) for d in out.devices
        ]
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        wire.stopping = True
        await asyncio.gather(*loops)  # in-flight cycles end within the request timeout
        out.run_seconds = cfg.duration
        out.drain_seconds = time.monotonic() - stop_at
        operator.session = wire.session  # an outage replaced it
        if storm_task is not None:
            await storm_task
            assert out.storm is not None
            out.storm.controller_answering = await operator.healthy(cfg.timeout)
            if cfg.controller_pid is not None:
                out.storm.controller_alive = procstat.alive(cfg.controller_pid)
                proc = procstat.sample(cfg.controller_pid)
                out.storm.processes_after = proc.processes if proc else 0
        await operator.revoke(out.token_kid, cfg.timeout)
    finally:
        stop_sampling.set()
        if sampler is not None:
            await sampler
        await wire.close()
        out.sim_cpu_s = procstat.own_cpu_seconds() - cpu_start
    return out


async def _storm(
    cfg: SimConfig,
    wire: Wire,
    out: Outcome,
    outage: Outage,
    stop_at: float,
    progress: Progress,
) -> None:
    """Drop the connections at the outage, open the storm's window at the return, and
    close it when every online device has had a status answered (or the run ends)."""
    rec = out.recorder
    storm = out.storm = Storm(outage.down - rec.start, outage.back - rec.start, wire.storm_pool)
    online = [d for d in out.devices if d.device_id is not None and d.kind != "offline"]
    storm.online = len(online)
    await asyncio.sleep(max(0.0, outage.down - time.monotonic()))
    progress(f"outage: {storm.online} devices silent for {cfg.outage_for:g} s")
    await wire.drop_connections(grace=cfg.timeout)
    if cfg.controller_pid is not None:
        proc = await asyncio.to_thread(procstat.sample, cfg.controller_pid)
        storm.processes_before = proc.processes if proc else 0
    await asyncio.sleep(max(0.0, outage.back - time.monotonic()))
    window = storm.window = rec.window = Window(time.monotonic())
    opened = wire.opened
    progress(f"storm: {storm.online} devices back at once on up to {storm.pool} connections")
    waiting = online
    while waiting and time.monotonic() < stop_at:
        await asyncio.sleep(0.1)
        waiting = [d for d in waiting if d.back_reported is None]
    window.closed = time.monotonic()
    storm.opened = wire.opened - opened
    storm.reported = sorted(
        d.back_reported - outage.back for d in online if d.back_reported is not None
    )
    last = f"{storm.reported[-1]:.1f} s" if storm.reported else "-"
    progress(f"storm: {len(storm.reported)}/{storm.online} reported again, the last after {last}")


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
