"""Faults between the producer, the agent's result buffer and the controller, with real
processes: nothing locally acked is lost, nothing is stored twice, order holds.

A producer (``tests/support/resultwriter.py``, standing in for the model runner)
journals each record only after the buffer acked it; a real ``edgefleet agent run``
uploads to a real controller over HTTPS. The tests kill them (SIGKILL), restart or
break the controller, cut and stall the network (``tests/support/faultproxy.py``),
fill the buffer's cap and the disk under it, then let the agent drain and compare the
journal with what the controller holds.

Each fault lasts until it visibly hit an upload (the uploader failed, the controller
counted a batch twice, a batch was cut), then the link comes back: the uploader has a
backoff of its own, so a long outage would only make the test slow. The agent takes
its HTTP timeout and its main loop's backoff from a config file (``--config``; there is
no ``--http-timeout`` flag). The controller answering 503 is its database gone: a
private PostgreSQL the test stops (SQLite would fail a write only after its 10 s busy
timeout).

Seeds are printed; ``EDGEFLEET_FAULT_SEED=<seed>`` replays a run (the choices, not
the timing of other processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.support.faultproxy import FaultProxy, _Conn
from tests.support.processes import AgentProcess, ControllerProcess, wait_for
from tests.support.smallfs import mounted_ext4

WRITER = Path(__file__).resolve().parent / "support" / "resultwriter.py"
UPLOAD_FAILED = "result upload failed"


# -- helpers ---------------------------------------------------------------------------------


def _seed() -> int:
    seed = int(os.environ.get("EDGEFLEET_FAULT_SEED") or random.randrange(1 << 32))
    print(f"fault seed: {seed} (EDGEFLEET_FAULT_SEED={seed} replays it)")
    return seed


def _agent_config(path: Path, http_timeout: float = 3.0) -> Path:
    """Fast retries for the main loop; a short HTTP timeout where a test stalls the link."""
    path.write_text(
        yaml.safe_dump(
            {
                "backoff_base": 0.05,
                "backoff_cap": 0.5,
                "token_backoff_cap": 0.5,
                "http_timeout": http_timeout,
            }
        )
    )
    return path


def _via_proxy(reg: Path, proxy: FaultProxy) -> Path:
    doc = yaml.safe_load(reg.read_text())
    doc["controller_url"] = f"https://127.0.0.1:{proxy.port}"
    reg.write_text(yaml.safe_dump(doc))
    return reg


class Producer:
    """One life of the result writer; SIGKILL it with :meth:`kill`."""

    def __init__(self, db: Path, journal: Path, run: int, seed: int, **opts: Any) -> None:
        self.log = journal.with_name(f"writer-{run}.log")
        opts["seed"] = seed
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(db), str(journal), f"--run={run}", *flags],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> None:
        code = self.proc.wait(timeout)
        assert code == 0, f"the result writer failed:\n{self.log.read_text()[-3000:]}"


def _kill(agent: AgentProcess) -> None:
    if agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)


@dataclass
class Journal:
    acked: dict[int, dict[str, Any]]
    """Sequence -> payload of every record the buffer acked to the writer."""
    refused: int


def _journal(path: Path) -> Journal:
    """Complete lines only: a writer killed mid-line had not journaled that record."""
    acked: dict[int, dict[str, Any]] = {}
    refused = 0
    if not path.exists():
        return Journal(acked, refused)
    for line in path.read_bytes().split(b"\n")[:-1]:
        entry = json.loads(line)
        if "refused" in entry:
            refused += entry["refused"]
            continue
        assert entry["seq"] not in acked, f"the buffer acked sequence {entry['seq']} twice"
        acked[entry["seq"]] = entry["payload"]
    return Journal(acked, refused)


@dataclass
class Local:
    epoch: str
    last_seq: int
    """The highest sequence the buffer ever gave (AUTOINCREMENT: not reused)."""
    depth: int
    acked: int
    drops: dict[str, int]
    integrity: str


def _local(db: Path) -> Local:
    """The buffer as another process sees it (read-only, while the agent runs)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'results'").fetchone()
        depth = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        drops = dict(conn.execute("SELECT reason, count FROM drops"))
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return Local(
        meta["epoch"], last[0] if last else 0, depth, int(meta.get("acked") or 0), drops, integrity
    )


class Held:
    """What the controller's database holds for one device, read with SQL."""

    def __init__(self, url: str, device_id: str) -> None:
        self.engine = create_engine(url, pool_pre_ping=True)
        self.device_id = device_id

    def rows(self) -> list[tuple[int, str, int, str]]:
        """(id, epoch, seq, payload) in order of arrival."""
        with self.engine.connect() as conn:
            return [
                tuple(r)  # type: ignore[misc]
                for r in conn.execute(
                    text(
                        "SELECT id, epoch, seq, payload FROM result WHERE device_id = :d "
                        "ORDER BY id"
                    ),
                    {"d": self.device_id},
                )
            ]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM result WHERE device_id = :d"), {"d": self.device_id}
                ).scalar_one()
            )

    def streams(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(
                    text("SELECT * FROM resultstream WHERE device_id = :d"), {"d": self.device_id}
                )
            ]

    def gaps(self) -> list[tuple[int, int, str]]:
        with self.engine.connect() as conn:
            return [
                (r.first, r.last, r.reason)
                for r in conn.execute(
                    text(
                        'SELECT "first", "last", reason FROM resultgap WHERE device_id = :d '
                        'ORDER BY "first"'
                    ),
                    {"d": self.device_id},
                )
            ]

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_url(ctl: ControllerProcess) -> str:
    return f"sqlite:///{ctl.data_dir / 'edgefleet.db'}"


def _device_id(agent: AgentProcess) -> str:
    return wait_for(lambda: agent.state().get("device_id"), 60, "the agent's enrolment")


def _drained(db: Path, held: Held, timeout: float = 60) -> Local:
    """Wait until the controller acked everything the buffer ever held."""

    def done() -> Local | None:
        local = _local(db)
        streams = held.streams()
        if local.depth == 0 and local.acked == local.last_seq and streams:
            return local
        return None

    return wait_for(done, timeout, "the agent to drain its buffer", every=0.2)


def _upload_failures(agent: AgentProcess) -> int:
    return agent.log.read_text(errors="replace").count(UPLOAD_FAILED)


def _check_delivered(
    seed: int,
    journal: Journal,
    local: Local,
    held: Held,
    evicted: set[int] | None = None,
) -> list[tuple[int, str, int, str]]:
    """Every locally acked record is at the controller exactly once, with its payload,
    in order of sequence; nothing is missing but what the buffer evicted by policy."""
    evicted = evicted or set()
    rows = held.rows()
    assert local.integrity == "ok", f"seed {seed}: the buffer is damaged: {local.integrity}"
    assert {r[1] for r in rows} == {local.epoch}, f"seed {seed}: epochs {set(r[1] for r in rows)}"
    seqs = [r[2] for r in rows]
    assert len(seqs) == len(set(seqs)), f"seed {seed}: a key is stored twice"
    assert seqs == sorted(seqs), f"seed {seed}: results arrived out of sequence order"
    assert journal.acked, f"seed {seed}: the writer acked nothing"
    missing = set(journal.acked) - set(seqs) - evicted
    assert not missing, (
        f"seed {seed}: {len(missing)} locally acked result(s) never reached the controller, "
        f"first {sorted(missing)[:10]}"
    )
    # Everything the buffer ever held arrived or was evicted: no sequence is lost.
    every = set(range(1, local.last_seq + 1))
    neither = sorted(every - set(seqs) - evicted)
    assert not neither, f"seed {seed}: sequences neither stored nor evicted: {neither[:10]}"
    assert not set(seqs) & evicted, f"seed {seed}: evicted results were stored"
    by_seq = {r[2]: json.loads(r[3]) for r in rows}
    wrong = [s for s, p in journal.acked.items() if s in by_seq and by_seq[s] != p]
    assert not wrong, f"seed {seed}: payloads differ for sequences {wrong[:10]}"
    streams = held.streams()
    assert len(streams) == 1 and streams[0]["acked"] == local.last_seq, streams
    assert streams[0]["stored"] == len(rows) and streams[0]["refused"] == 0, streams
    return rows


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    ctl = ControllerProcess(tmp_path / "ctl", workers=1, device_interval_seconds=1)
    try:
        yield ctl.start()
    finally:
        ctl.close()


# -- kill -9 -------------------------------------------------------------------------------

ROUNDS = 20


def test_kill_9_of_agent_and_producer_at_random_moments_loses_and_repeats_nothing(
    tmp_path: Path, controller: ControllerProcess, agents: list[AgentProcess]
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    reg = controller.registration(tmp_path / "registration.yaml")
    config = _agent_config(tmp_path / "agent.yaml")
    state = tmp_path / "state"
    db = state / "results" / "results.db"
    journal = tmp_path / "journal.jsonl"

    def start_agent() -> AgentProcess:
        agent = AgentProcess(reg, state, "SN-KILL", extra=["--config", str(config)])
        agents.append(agent)
        return agent

    runs = 0
    producer = Producer(db, journal, runs, rng.randrange(1 << 30), interval=0.01)
    agent = start_agent()
    held = Held(_sqlite_url(controller), _device_id(agent))
    try:
        wait_for(lambda: held.count() > 0, 60, "the first upload")
        kills = {"agent": 0, "producer": 0, "both": 0}
        mid_upload = 0
        for _ in range(ROUNDS):
            what = rng.choice(list(kills))
            if what != "producer" and rng.random() < 0.5:
                # Half the agent's deaths come while it sends a backlog (it uploads in
                # bursts: it looks again every couple of seconds once it caught up), the
                # others at any point of its life: starting, enrolling, idle, sending.
                start = held.count()
                wait_for(
                    lambda start=start: held.count() > start,
                    60,
                    f"the agent to upload (seed {seed})",
                    every=0.02,
                )
                before = held.count()
                time.sleep(rng.uniform(0.05, 0.25))
            else:
                time.sleep(rng.uniform(0.0, 1.0))
                before = held.count()
                time.sleep(0.25)
            if what in ("agent", "both"):
                _kill(agent)
                # The controller's count moved in the agent's last moments: it died with
                # uploads under way, not idle between them.
                mid_upload += held.count() != before
            if what in ("producer", "both"):
                producer.kill()
            kills[what] += 1
            if what == "both":
                local = _local(db)
                assert local.integrity == "ok", f"seed {seed}: {local.integrity}"
            if what in ("producer", "both"):
                runs += 1
                producer = Producer(db, journal, runs, rng.randrange(1 << 30), interval=0.01)
            if what in ("agent", "both"):
                agent = start_agent()
        producer.kill()
        local = _drained(db, held)
        print(
            f"kills {kills}, {mid_upload} of the agent mid-upload, {local.last_seq} results, "
            f"{len(_journal(journal).acked)} journaled, streams {held.streams()}"
        )
        rows = _check_delivered(seed, _journal(journal), local, held)
        assert held.gaps() == [], f"seed {seed}: sequences declared skipped: {held.gaps()}"
        assert kills["agent"] + kills["both"] >= 3, f"seed {seed}: {kills}"
        assert mid_upload >= 2, f"seed {seed}: the agent was never killed mid-upload"
        assert len(rows) > 2000, f"seed {seed}: only {len(rows)} results in the run"
    finally:
        producer.kill()
        held.close()


# -- the controller restarted, or answering 500 ----------------------------------------------


def _postgres_binary(name: str) -> str | None:
    """On PATH, or where Debian's postgresql package puts it (newest version first)."""
    found = shutil.which(name)
    if found is None:
        versions = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        found = str(versions[-1]) if versions else None
    return found


class PrivatePostgres:
    """A PostgreSQL server of this test's own (``initdb``/``pg_ctl`` as the postgres
    user, on a Unix socket in a temporary folder), so that the test may stop it."""

    def __init__(self) -> None:
        initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip(
                "initdb/pg_ctl not found: install Debian's postgresql package "
                "(apt-get install postgresql) to run this test on a private server"
            )
        self.pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="efpg-", dir="/tmp"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        self._as_postgres = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("no postgres user: PostgreSQL refuses to run as root")
            for path in (self.root, self.sock):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql+psycopg://postgres@/postgres?host={self.sock}"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self._as_postgres, *cmd], capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd[0]} failed:\n{done.stdout}\n{done.stderr}"

    def start(self) -> None:
        options = f"-k {self.sock} -c listen_addresses='' -c fsync=off"
        log = str(self.root / "log")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", log, "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        subprocess.run(
            [*self._as_postgres, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


def _failed(agent: AgentProcess, before: int, what: str, seed: int, timeout: float = 30) -> None:
    wait_for(
        lambda: _upload_failures(agent) > before,
        timeout,
        f"an upload to fail while {what} (seed {seed})",
        every=0.05,
    )


def _resumed(held: Held, what: str, seed: int, timeout: float = 45) -> None:
    start = held.count()
    wait_for(
        lambda: held.count() > start,
        timeout,
        f"uploads to resume after {what} (seed {seed})",
        every=0.1,
    )


def test_controller_restarts_and_500s_lose_and_repeat_nothing(
    tmp_path: Path, private_postgres: PrivatePostgres, agents: list[AgentProcess]
) -> None:
    """PostgreSQL (a private server the test stops: the controller answers 503, which
    was a 500 before it told a lost database apart from a bug)."""
    seed = _seed()
    rng = random.Random(seed)
    pg = private_postgres
    ctl = ControllerProcess(
        tmp_path / "ctl", database_url=pg.url, workers=1, device_interval_seconds=1
    )
    ctl.start()
    state = tmp_path / "state"
    db = state / "results" / "results.db"
    journal = tmp_path / "journal.jsonl"
    producer: Producer | None = None
    held: Held | None = None
    try:
        reg = ctl.registration(tmp_path / "registration.yaml")
        producer = Producer(db, journal, 0, seed, interval=0.02)
        agent = AgentProcess(
            reg, state, "SN-RESTART", extra=["--config", str(_agent_config(tmp_path / "a.yaml"))]
        )
        agents.append(agent)
        held = Held(pg.url, _device_id(agent))
        wait_for(lambda: held.count() > 0, 60, "the first upload")
        episodes = [
            "controller stopped",
            "controller killed",
            "database stopped",
            "database crashed",
        ]
        rng.shuffle(episodes)
        t0 = time.monotonic()
        for what in episodes:
            time.sleep(rng.uniform(0.1, 1.0))
            before = _upload_failures(agent)
            if what == "controller stopped":
                ctl.stop()
                time.sleep(rng.uniform(0.2, 1.5))
                ctl.start()
            elif what == "controller killed":
                ctl.kill()
                time.sleep(rng.uniform(0.2, 1.5))
                ctl.start()
            else:
                pg.stop("fast" if what == "database stopped" else "immediate")
                _failed(agent, before, what, seed)
                time.sleep(rng.uniform(0.0, 1.0))
                pg.start()
            _resumed(held, what, seed)
            print(f"{what}: resumed at {time.monotonic() - t0:.1f}s")
        producer.kill()
        local = _drained(db, held)
        print(f"drained at {time.monotonic() - t0:.1f}s")
        log = agent.log.read_text(errors="replace")
        print(f"{local.last_seq} results; streams {held.streams()}")
        _check_delivered(seed, _journal(journal), local, held)
        assert held.gaps() == [], f"seed {seed}: sequences declared skipped: {held.gaps()}"
        assert re.search(rf"{UPLOAD_FAILED} \(database_unavailable: ", log), (
            "the controller never answered 503 while its database was down"
        )
    finally:
        if producer is not None:
            producer.kill()
        if held is not None:
            held.close()
        ctl.close()


# -- timeouts and connections cut mid-batch ------------------------------------------------


class _CutConn(_Conn):
    """A proxied connection that forwards at most ``budget`` bytes towards the server
    once its proxy cuts requests, then closes both ends: a request cut short."""

    budget: int | None = None

    def _send(self, data: bytes, dst: socket.socket, downstream: bool) -> bool:
        proxy = self.proxy
        assert isinstance(proxy, CuttingProxy)
        if downstream or not proxy.cutting:
            return super()._send(data, dst, downstream)
        if self.budget is None:
            self.budget = proxy.rng.randint(*proxy.cut_range)
        if len(data) > self.budget:
            dst.sendall(data[: self.budget])
            # Only a result batch comes in chunks this large (a status report or a token
            # request is a few kB): a batch cut in the middle.
            proxy.batches_cut += len(data) >= BIG_CHUNK and self.budget > 0
            return False
        self.budget -= len(data)
        dst.sendall(data)
        return True


class CuttingProxy(FaultProxy):
    """FaultProxy, plus :meth:`cut_requests`: each connection then forwards a random
    number of bytes (in ``cut_range``) towards the controller, and is cut there."""

    connection = _CutConn

    def __init__(self, upstream_port: int, rng: random.Random) -> None:
        self.rng = rng
        self.cutting = False
        self.cut_range = (2000, 100_000)
        self.batches_cut = 0
        """Requests cut inside a large chunk: result batches half forwarded."""
        super().__init__(upstream_port)

    def set_mode(self, mode: str, *, ms: float = 0, n_bytes: int | None = None) -> None:
        self.cutting = False
        super().set_mode(mode, ms=ms, n_bytes=n_bytes)

    def cut_requests(self) -> None:
        self.forward()
        with self._lock:
            for conn in self._conns:
                conn.budget = None  # type: ignore[attr-defined]
        self.cutting = True


BIG_CHUNK = 16 * 1024
HTTP_TIMEOUT = 1.5


@dataclass(frozen=True)
class Marks:
    failures: int
    """Upload failures in the agent's log."""
    duplicates: int
    """Batches' records the controller had already (the answer to them was lost)."""
    batches_cut: int


def _duplicates(held: Held) -> int:
    return int(held.streams()[0]["duplicates"])


def _fault_hit(
    what: str, agent: AgentProcess, held: Held, proxy: CuttingProxy, before: Marks
) -> bool:
    """Whether the fault reached an upload: the uploader failed (it retries later); for
    a cut answer, or the controller counted a batch again (the agent's connection
    resends at once a request whose kept-alive connection turns out closed); for a cut
    request, a batch was cut in the middle."""
    if what == "cut requests":
        return proxy.batches_cut > before.batches_cut
    failed = _upload_failures(agent) > before.failures
    return failed or (what == "cut answers" and _duplicates(held) > before.duplicates)


def test_timeouts_and_connections_cut_mid_batch_lose_and_repeat_nothing(
    tmp_path: Path, controller: ControllerProcess, agents: list[AgentProcess]
) -> None:
    """SQLite. The link drops, refuses, stalls past the agent's HTTP timeout, and cuts
    connections mid-batch (the request or the answer) while the producer writes."""
    seed = _seed()
    rng = random.Random(seed)
    reg = controller.registration(tmp_path / "registration.yaml")
    state = tmp_path / "state"
    db = state / "results" / "results.db"
    journal = tmp_path / "journal.jsonl"
    producer = Producer(db, journal, 0, seed, interval=0.02)
    held: Held | None = None
    with CuttingProxy(controller.port, random.Random(seed + 1)) as proxy:
        try:
            _via_proxy(reg, proxy)
            config = _agent_config(tmp_path / "agent.yaml", http_timeout=HTTP_TIMEOUT)
            agent = AgentProcess(reg, state, "SN-NET", extra=["--config", str(config)])
            agents.append(agent)
            held = Held(_sqlite_url(controller), _device_id(agent))
            wait_for(lambda: held.count() > 0, 60, "the first upload")
            episodes = ["drop", "refuse", "stall", "cut answers", "cut answers", "cut requests"]
            rng.shuffle(episodes)
            t0 = time.monotonic()
            duplicates: dict[str, int] = {}
            for what in episodes:
                time.sleep(rng.uniform(0.1, 1.0))
                before = Marks(_upload_failures(agent), _duplicates(held), proxy.batches_cut)
                if what == "drop":
                    proxy.drop()
                elif what == "refuse":
                    proxy.refuse()
                elif what == "stall":
                    # Each chunk waits past the agent's timeout: the agent gives up on an
                    # answer the controller may well send (it stored the batch).
                    proxy.delay(ms=HTTP_TIMEOUT * 1000 * rng.uniform(0.6, 1.5))
                elif what == "cut answers":
                    # Connections close once this many bytes came back (fewer than a TLS
                    # handshake sends): a kept-alive one at its next answer, to a batch the
                    # controller stored; a new one in its handshake.
                    n_bytes = rng.randint(0, 3_000)
                    print(f"{what}: after {n_bytes} bytes")
                    proxy.cut_after(n_bytes)
                else:
                    # A backlog first (the link down for a while), so that the next batch
                    # is large; then each connection is cut after some random length.
                    proxy.drop()
                    _failed(agent, before.failures, what, seed)
                    time.sleep(rng.uniform(0.5, 1.5))
                    proxy.cut_requests()
                wait_for(
                    lambda what=what, before=before: _fault_hit(what, agent, held, proxy, before),
                    30,
                    f"the fault to hit an upload: {what} (seed {seed})",
                    every=0.05,
                )
                time.sleep(rng.uniform(0.0, 1.5))  # a backlog builds up meanwhile
                proxy.forward()
                _resumed(held, what, seed)
                duplicates[what] = duplicates.get(what, 0) + _duplicates(held) - before.duplicates
                print(f"{what}: resumed at {time.monotonic() - t0:.1f}s")
            producer.kill()
            local = _drained(db, held)
            print(f"drained at {time.monotonic() - t0:.1f}s; {local.last_seq} results")
            print(f"duplicates by fault {duplicates}; batches cut {proxy.batches_cut}")
            print(f"streams {held.streams()}")
            _check_delivered(seed, _journal(journal), local, held)
            assert held.gaps() == [], f"seed {seed}: sequences declared skipped: {held.gaps()}"
            assert proxy.batches_cut > 0, f"seed {seed}: no batch was cut in the middle"
            # Batches were stored but their answers lost: sent again, counted once.
            assert held.streams()[0]["duplicates"] > 0, f"seed {seed}: no answer was lost"
        finally:
            producer.kill()
            if held is not None:
                held.close()


# -- a full buffer, a full disk --------------------------------------------------------------


class RssSampler:
    """The agent's resident memory (VmRSS, kB) every ``every`` seconds, in a thread."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            with contextlib.suppress(OSError, AttributeError):
                self.samples.append(self.sample())

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


RSS_GROWTH_LIMIT_KB = 5 * 1024


def _metric(ctl: ControllerProcess, name: str, **labels: str) -> float | None:
    with ctl.client() as c:
        body = c.get(ctl.url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return None


def _overflow_while_offline(
    tmp_path: Path,
    ctl: ControllerProcess,
    agents: list[AgentProcess],
    results: dict[str, Any],
    fill: dict[str, Any],
    then: Callable[[Path, Path, int], None] | None = None,
) -> tuple[dict[str, int], set[int], list[int]]:
    """Enrol with a profile whose ``results`` are ``results``; cut the controller off;
    let a producer write ``fill`` (its options), then run ``then(db, journal, seed)``,
    while the agent's memory is watched; bring the controller back. Checks that the
    drops are reported and every acked record is stored or was evicted; returns the
    drops by reason, the evicted sequences and those stored."""
    seed = _seed()
    with ctl.client() as c:
        c.post(
            "/profiles", json={"name": "buffer", "spec": {"results": results}}
        ).raise_for_status()
    reg = ctl.registration(tmp_path / "registration.yaml", profile="buffer")
    state = tmp_path / "state"
    db = state / "results" / "results.db"
    journal = tmp_path / "journal.jsonl"
    with FaultProxy(ctl.port) as proxy:
        _via_proxy(reg, proxy)
        config = _agent_config(tmp_path / "agent.yaml")
        agent = AgentProcess(reg, state, "SN-FULL", extra=["--config", str(config)])
        agents.append(agent)
        Producer(db, journal, 0, seed, count=200).wait(60)
        device_id = _device_id(agent)
        held = Held(_sqlite_url(ctl), device_id)
        try:
            # The agent applied the profile's cap and policy to the buffer, and uploads.
            wait_for(lambda: _local(db).acked == 200, 60, "the first results uploaded")
            with contextlib.closing(sqlite3.connect(db)) as conn:
                meta = dict(conn.execute("SELECT key, value FROM meta"))
            assert int(meta["cap"]) == results["max_bytes"], meta
            assert _local(db).drops == {}
            rss = RssSampler(agent.proc.pid)
            time.sleep(1.0)
            proxy.refuse()
            Producer(db, journal, 1, seed + 1, **fill).wait(180)
            if then is not None:
                then(db, journal, seed)
            time.sleep(2.0)  # the agent keeps trying, its memory still watched
            assert agent.proc.poll() is None, "the agent died while its buffer was full"
            local = _local(db)
            assert local.drops, f"seed {seed}: nothing was evicted: {local}"
            print(f"offline: {local}")
            offline = list(rss.samples)
            proxy.forward()
            # The drops are in the agent's status, at the controller, and in /metrics.
            with ctl.client() as c:

                def reported() -> dict[str, Any] | None:
                    status = c.get(f"/devices/{device_id}").json().get("status") or {}
                    buffer = status.get("buffer") or {}
                    return buffer if buffer.get("drops") == local.drops else None

                buffer = wait_for(reported, 60, "the drops in the device's status")
            print(f"the device's buffer at the controller: {buffer}")
            for reason, count in local.drops.items():
                got = _metric(ctl, "edgefleet_buffer_drops", device=device_id, reason=reason)
                assert got == count, f"/metrics says {got} {reason} drops, the buffer {count}"
            local = _drained(db, held, timeout=90)
            samples = rss.stop()
            assert agent.proc.poll() is None, "the agent died"
            evicted = {
                s
                for first, last, why in held.gaps()
                if why == "evicted"
                for s in range(first, last + 1)
            }
            rows = _check_delivered(seed, _journal(journal), local, held, evicted)
            # Each drop is a sequence a batch declared evicted, and no other.
            assert len(evicted) == sum(local.drops.values()), (len(evicted), local.drops)
            print(
                f"agent RSS {samples[0]} kB when the controller went away, max {max(offline)} kB "
                f"offline, {max(samples)} kB draining ({len(samples)} samples); "
                f"{len(evicted)} of {local.last_seq} results evicted"
            )
            assert len(offline) > 20
            for phase, seen in (("offline", offline), ("offline and draining", samples)):
                growth = max(seen) - samples[0]
                assert growth < RSS_GROWTH_LIMIT_KB, f"the agent's RSS grew by {growth} kB {phase}"
            return local.drops, evicted, [r[2] for r in rows]
        finally:
            held.close()


def test_a_full_buffer_evicts_by_policy_reports_drops_and_drains(
    tmp_path: Path, controller: ControllerProcess, agents: list[AgentProcess]
) -> None:
    """SQLite. A 1 MiB cap (the smallest a profile allows), drop oldest; ~4 MB written
    while the controller is unreachable."""
    drops, evicted, stored = _overflow_while_offline(
        tmp_path,
        controller,
        agents,
        {"max_bytes": 1 << 20, "policy": "drop_oldest", "rate_per_second": 50},
        {"count": 12_000, "pad": 300, "max_batch": 60},
    )
    assert set(drops) == {"oldest"}
    kept = [s for s in stored if s > 200]  # the backlog that outlived the outage
    assert max(evicted) < min(kept), "a newer result was evicted before an older one"


SMALL_FS_BYTES = 24 << 20


@pytest.fixture
def results_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB ext4 (mkfs defaults: 1 KiB blocks at this size) mounted where the agent
    keeps its results, ``tmp_path/state/results``: a data partition to fill."""
    results = tmp_path / "state" / "results"
    with mounted_ext4(tmp_path / "results.img", results, SMALL_FS_BYTES) as mountpoint:
        yield mountpoint


def _fill_the_disk(folder: Path) -> None:
    """Whatever else shares the partition takes its last block (root may use them all)."""
    with (folder / "ballast").open("wb", buffering=0) as fh:
        for chunk in (1 << 20, 64 << 10, 4 << 10, 512):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)
        with contextlib.suppress(OSError):
            os.fsync(fh.fileno())
        with pytest.raises(OSError):
            fh.write(b"\0" * 4096)
            os.fsync(fh.fileno())


def test_a_full_disk_evicts_by_policy_reports_drops_and_drains(
    tmp_path: Path, controller: ControllerProcess, agents: list[AgentProcess], results_fs: Path
) -> None:
    """SQLite. The results on a 24 MB partition, a cap far beyond it (64 MiB), policy
    sample. Offline, the producer fills the partition; then the disk is filled to its
    last block, and the producer writes on: the buffer stores by evicting, and the agent
    drains (deleting on a full disk) once the controller is back."""
    refused: list[int] = []

    def then(db: Path, journal: Path, seed: int) -> None:
        before = _local(db).drops
        assert before, f"seed {seed}: the buffer filled the disk without evicting"
        _fill_the_disk(results_fs)
        Producer(db, journal, 2, seed + 2, count=3_000, pad=300, max_batch=60).wait(120)
        after = _local(db).drops
        assert after["sampled"] > before["sampled"], f"seed {seed}: no eviction on a full disk"
        refused.append(_journal(journal).refused)

    drops, evicted, stored = _overflow_while_offline(
        tmp_path,
        controller,
        agents,
        {"max_bytes": 64 << 20, "policy": "sample", "rate_per_second": 50},
        {"count": 30_000, "pad": 300, "max_batch": 60},
        then,
    )
    assert set(drops) == {"sampled"}
    assert refused == [0], f"the buffer refused {refused} result(s) on the full disk"
    kept = [s for s in stored if s > 200]
    assert min(kept) < max(evicted), "sampling kept none of the oldest results"
