"""Shared pieces of the benchmarks: a controller process on a temp data dir, device
identities, and wrk runs whose figures are parsed from its own report."""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def spawn_agent(
    reg: Path, state: Path, serial: str, settings: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``edgefleet agent run`` as a device starts it, quiet, with none of our settings
    but ``settings`` (``EDGEFLEET_AGENT_*`` variables); ``serial`` is its hardware id too,
    or every agent on this machine would claim the same hardware (and the second would
    wait for an operator to approve a new key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(settings or {})
    return subprocess.Popen(
        [
            *EDGEFLEET,
            "agent",
            "run",
            "--registration",
            str(reg),
            "--state-dir",
            str(state),
            "--serial",
            serial,
            "--hardware-id",
            serial,
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pinned(cpus: str | None) -> list[str]:
    """The ``taskset`` prefix that keeps a command (and what it starts) on ``cpus``."""
    return ["taskset", "-c", cpus] if cpus else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningController:
    url: str
    data_dir: Path
    admin_token: str
    proc: subprocess.Popen[bytes]

    @property
    def ca(self) -> str:
        return str(self.data_dir / "pki" / "root.pem")

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            verify=ssl.create_default_context(cafile=self.ca),
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=60,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def fresh_schema(database_url: str) -> str:
    """A schema of the benchmark's own, so runs never see each other's data."""
    import psycopg

    schema = "bench_" + secrets.token_hex(4)
    plain = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    atexit.register(_drop_schema, plain, schema)
    sep = "&" if "?" in database_url else "?"
    return f"{database_url}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def start_controller(
    database_url: str | None = None,
    workers: int | None = None,
    data_dir: Path | None = None,
    admin_token: str | None = None,
    cpus: str | None = None,
) -> RunningController:
    """A controller process; ``data_dir`` and ``admin_token`` restart an earlier one (the
    admin token is printed only at the first start); ``cpus`` pins it and its workers
    (``taskset -c``)."""
    data = data_dir or Path(tempfile.mkdtemp(prefix="ef-bench-"))
    port = free_port()
    env = dict(os.environ)  # EDGEFLEET_* settings pass through; the ones below are ours
    env["EDGEFLEET_DATA_DIR"] = str(data)
    env["EDGEFLEET_PORT"] = str(port)
    env["EDGEFLEET_LOG_LEVEL"] = "warning"
    # The benchmarks drive thousands of enrolments and token requests a second from one
    # address, which the per-client rate limits exist to stop; they measure the
    # controller, so the limits are off unless the caller's environment says otherwise.
    env.setdefault("EDGEFLEET_ENROL_RATE_PER_SECOND", "0")
    env.setdefault("EDGEFLEET_TOKEN_RATE_PER_SECOND", "0")
    if database_url:
        env["EDGEFLEET_DATABASE_URL"] = fresh_schema(database_url)
    if workers:
        env["EDGEFLEET_WORKERS"] = str(workers)
    (data / "controller.log").unlink(missing_ok=True)
    log = open(data / "controller.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [*pinned(cpus), *EDGEFLEET, "controller", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = (data / "controller.log").read_text(errors="replace")
        found = re.search(r"(efo\.\S+)", text)
        token = admin_token or (found.group(1) if found else None)
        if token and (data / "pki" / "root.pem").exists():
            try:
                httpx.get(
                    url + "/readyz",
                    verify=ssl.create_default_context(cafile=data / "pki" / "root.pem"),
                    timeout=2,
                )
                return RunningController(url, data, token, proc)
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"controller exited:\n{text}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("controller did not become ready in 60 s")


def make_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


NOT_MODIFIED_MAX = 512
"""Bytes a 304 takes at most, headers included: a run reading more per request got
bodies (200s), so its devices' ETags did not match."""


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int
    cpu_seconds: float
    duration_s: float
    bytes_read: float = 0.0
    """What wrk read, headers included: per request it tells 304s (no body) from 200s."""

    def bytes_per_request(self) -> float:
        return self.bytes_read / self.requests if self.requests else 0.0


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, script: Path, threads: int, connections: int, seconds: int) -> WrkResult:
    """Run wrk and parse its report; the CPU it used is read from the kernel's accounting."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    before = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    size, unit = re.search(r"requests in [^,]+, ([\d.]+)([KMG]?B) read", out).groups()  # type: ignore[union-attr]
    read = float(size) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[unit]
    return WrkResult(rps, p50, p99, int(bad.group(1)) if bad else 0, total, cpu, seconds, read)


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@dataclass
class SimulatorRun:
    """``edgefleet simulate`` against a fresh controller: its output, report and wall time."""

    stdout: str
    returncode: int
    report: dict
    wall_s: float
    controller_up: bool
    """The controller process was still running when the simulator ended."""


def run_simulator(
    flags: list[str], out: Path, database_url: str | None, workers: int | None, site: str
) -> SimulatorRun:
    """Run ``edgefleet simulate FLAGS`` as a user runs it, in its own process, against a
    fresh controller (rate limits off: one simulator is one address), its report and
    chart into ``out``; exits with the simulator's output if it could not run."""
    out.mkdir(parents=True, exist_ok=True)
    ctl = start_controller(database_url, workers=workers)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env.update(EDGEFLEET_URL=ctl.url, EDGEFLEET_TOKEN=ctl.admin_token, EDGEFLEET_CA_FILE=ctl.ca)
        cmd = [
            *EDGEFLEET,
            "simulate",
            *flags,
            *("--controller-pid", str(ctl.proc.pid), "--site", site),
            *("--report", str(out / "report.json"), "--chart", str(out / "chart.png")),
        ]
        started = time.monotonic()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        alive = ctl.proc.poll() is None
    finally:
        ctl.stop()
    if run.returncode == 2 or not (out / "report.json").exists():
        raise SystemExit(f"the simulator could not run:\n{run.stdout}\n{run.stderr}")
    report = json.loads((out / "report.json").read_text())
    return SimulatorRun(run.stdout, run.returncode, report, wall, alive)
