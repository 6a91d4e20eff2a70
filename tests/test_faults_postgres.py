"""PostgreSQL restarted under load (issue 13): a private server on a loopback port is
stopped (``-m fast``, then ``-m immediate``: a crash) and started again while real
agents report status and upload results and an operator lists devices.

What an operator relies on: the controller process keeps running and recovers by itself;
while the database is away every request gets a prompt 503 with Retry-After and a
message saying so (no hang, no 500 with a traceback); afterwards everything works, no
device is enrolled twice, and every result the agents' buffers held arrives exactly
once."""

from __future__ import annotations

import json
import ssl
import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.support.faults import Poller, loopback_postgres
from tests.support.processes import AgentProcess, ControllerProcess, wait_for
from tests.test_results_faults import (
    Held,
    Producer,
    _agent_config,
    _check_delivered,
    _drained,
    _journal,
    _seed,
)

AGENTS = 2


def test_postgres_restarted_under_load_loses_and_repeats_nothing(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    seed = _seed()
    with loopback_postgres() as pg:
        ctl = ControllerProcess(
            tmp_path / "ctl",
            database_url=pg.url,
            workers=2,
            device_interval_seconds=1,
            last_seen_flush_seconds=0.2,
        )
        ctl.start()
        producers: list[Producer] = []
        helds: list[Held] = []
        try:
            reg = ctl.registration(tmp_path / "registration.yaml", max_uses=AGENTS)
            config = _agent_config(tmp_path / "agent.yaml")
            for i in range(AGENTS):
                state = tmp_path / f"dev{i}"
                db = state / "results" / "results.db"
                producers.append(
                    Producer(db, tmp_path / f"journal{i}.jsonl", 0, seed + i, interval=0.05)
                )
                agent = AgentProcess(reg, state, f"SN-PG-{i}", extra=["--config", str(config)])
                agents.append(agent)
            for agent in agents:
                device = wait_for(lambda a=agent: a.state().get("device_id"), 60, "enrolment")
                helds.append(Held(pg.url, device))
            for held in helds:
                wait_for(lambda h=held: h.count() > 0, 60, "the first upload")
            pid = ctl.proc.pid  # type: ignore[union-attr]
            with Poller(ctl.url + "/api/v1", ctl.ca, ctl.admin_token, "/devices") as op:
                for mode in ("fast", "immediate"):
                    wait_for(lambda: op.answers and op.answers[-1].status == 200, 30, "a listing")
                    before = [h.count() for h in helds]
                    down = time.monotonic()
                    pg.stop(mode)
                    wait_for(
                        lambda d=down: any(a.status == 503 for a in op.since(d)),
                        30,
                        f"a 503 while PostgreSQL is stopped ({mode})",
                    )
                    # Kubernetes' probes: alive (no restart), not ready (no traffic).
                    probe = ssl.create_default_context(cafile=ctl.ca)
                    assert httpx.get(ctl.url + "/healthz", verify=probe).status_code == 200
                    assert httpx.get(ctl.url + "/readyz", verify=probe).status_code == 503
                    time.sleep(1.0)  # agents meet the outage too
                    up = time.monotonic()
                    pg.start()
                    listed = wait_for(
                        lambda u=up: next((a for a in op.since(u) if a.status == 200), None),
                        30,
                        f"a listing after PostgreSQL came back ({mode})",
                    )
                    for held, count in zip(helds, before, strict=True):
                        wait_for(
                            lambda h=held, c=count: h.count() > c,
                            45,
                            f"uploads to resume after the {mode} restart",
                        )
                    resumed = time.monotonic()
                    during = [a for a in op.since(down) if a.at < listed.at]
                    print(
                        f"restart -m {mode}: {len(during)} listings during the outage "
                        f"({sorted({a.status for a in during}, key=str)}); operator back "
                        f"{listed.at - up:.1f}s, every agent's uploads {resumed - up:.1f}s "
                        "after PostgreSQL was up"
                    )
                    for a in during:
                        assert a.status in (200, 503), f"{a.status} during the outage: {a.body}"
                        assert a.took < 10, f"a listing hung {a.took:.1f}s during the outage"
                        if a.status == 503:
                            error = json.loads(a.body)["error"]
                            assert error["code"] == "database_unavailable", error
                            assert "database is unavailable" in error["message"], error
                            assert a.retry_after and 1 <= int(a.retry_after) <= 5, a
            assert ctl.proc.poll() is None and ctl.proc.pid == pid, "the controller restarted"
            for producer in producers:
                producer.kill()
            for i, held in enumerate(helds):
                db = tmp_path / f"dev{i}" / "results" / "results.db"
                local = _drained(db, held)
                _check_delivered(seed + i, _journal(tmp_path / f"journal{i}.jsonl"), local, held)
                assert held.gaps() == [], held.gaps()
            with ctl.client() as c:
                devices = c.get("/devices").json()
                assert sorted(d["serial"] for d in devices) == [
                    f"SN-PG-{i}" for i in range(AGENTS)
                ], "a device was enrolled twice, or lost"
                # Status after the outage: every device is seen again within a few intervals.
                seen_after = time.time()

                def all_reported() -> bool:
                    rows = c.get("/devices").json()
                    seen = [d.get("last_seen_at") for d in rows]
                    return all(s and _epoch(s) > seen_after for s in seen)

                wait_for(all_reported, 30, "every device's status after the outages")
            log = ctl.log.read_text(errors="replace")
            # No request ended in a 500, and no background thread (cache listener,
            # rollout driver, last-seen writer) died: each logs the outage and goes on.
            assert "Exception in ASGI application" not in log, log[-3000:]
            assert "Exception in thread" not in log, log[-3000:]
        finally:
            for producer in producers:
                producer.kill()
            for held in helds:
                held.close()
            ctl.close()


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()
