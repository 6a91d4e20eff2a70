"""Two days offline: a real agent behind a loopback proxy that drops everything while
the device keeps producing results, then the network comes back. Real processes over
real HTTPS, on PostgreSQL (the fault tests cover SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from edgefleet.agent.buffer import Buffer, Policy, Record
from edgefleet.agent.results import RESULTS_DB, RESULTS_FOLDER
from tests.support.faultproxy import FaultProxy
from tests.support.processes import AgentProcess, ControllerProcess, wait_for

TWO_DAYS = 2 * 86400 * 2
"""Results at 2 a second for 48 hours: 345,600."""
CAP = 256 * 1024 * 1024


def _records(start: int, count: int) -> list[Record]:
    return [
        {
            "payload": {"i": i, "outputs": {"scores": [[0.91, 0.05, 0.04]]}},
            "digest": "sha256:" + "d" * 64,
            "slot": "A",
            "revision": 1,
        }
        for i in range(start, start + count)
    ]


@pytest.mark.usefixtures("postgres_available")
def test_two_days_offline_arrive_in_order_exactly_once(
    tmp_path: Path, postgres_url: str, agents: list[AgentProcess]
) -> None:
    ctl = ControllerProcess(tmp_path / "ctl", postgres_url, device_interval_seconds=1).start()
    db = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        profile = tmp_path / "offline.yaml"
        results = {"rate_per_second": 2, "retention_hours": 48, "max_bytes": CAP}
        profile.write_text(yaml.safe_dump({"name": "offline", "results": results}))
        assert ctl.cli("profiles", "apply", str(profile)).returncode == 0
        reg = ctl.registration(tmp_path / "registration.yaml", profile="offline")
        state = tmp_path / "agent"
        path = state / RESULTS_FOLDER / RESULTS_DB
        path.parent.mkdir(parents=True)
        with Buffer(path) as buf:
            buf.append_many(_records(0, 100))  # from before the outage
        with FaultProxy(ctl.port) as proxy:
            doc = yaml.safe_load(reg.read_text())
            doc["controller_url"] = f"https://127.0.0.1:{proxy.port}"
            reg.write_text(yaml.safe_dump(doc))
            agent = AgentProcess(reg, state, "SN-OFFLINE")
            agents.append(agent)

            def stored() -> int:
                with db.connect() as conn:
                    return int(conn.execute(text("SELECT count(*) FROM result")).scalar_one())

            wait_for(lambda: stored() == 100, 60, "the results from before the outage")
            with Buffer(path) as buf:  # the profile's capacity reached the device
                assert (buf.cap_bytes, buf.policy, buf.rate) == (CAP, Policy.DROP_OLDEST, 2.0)

            proxy.drop()
            with Buffer(path) as buf:
                for start in range(100, 100 + TWO_DAYS, 5000):
                    buf.append_many(_records(start, min(5000, 100 + TWO_DAYS - start)))
                assert buf.stats().drops == {}
            proxy.forward()

            total = 100 + TWO_DAYS
            wait_for(lambda: stored() == total, 240, f"{total} results", every=1)
            with db.connect() as conn:
                keys, first, last = conn.execute(
                    text("SELECT count(DISTINCT (epoch, seq)), min(seq), max(seq) FROM result")
                ).one()
                assert (keys, first, last) == (total, 1, total)
                disorder = conn.execute(
                    text(
                        "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (ORDER BY id) AS prev "
                        "FROM result) AS arrival WHERE seq <= prev"
                    )
                ).scalar_one()
                assert disorder == 0, "results were stored out of sequence order"
                wrong = conn.execute(
                    text("SELECT count(*) FROM result WHERE (payload::json->>'i')::int + 1 <> seq")
                ).scalar_one()
                assert wrong == 0, "a stored payload is not the one written under its key"
            with Buffer(path) as buf:
                wait_for(lambda: buf.stats().depth == 0, 30, "the device to drop what was acked")
                assert buf.acked == total
                buf.append_many(_records(total, 10))  # a mean size to estimate capacity from

            # A smaller cap in a new revision reaches the buffer, and the agent says that it
            # no longer holds the profile's 48 hours.
            small = {**results, "max_bytes": 1024 * 1024, "policy": "drop_newest"}
            profile.write_text(yaml.safe_dump({"name": "offline", "results": small}))
            assert ctl.cli("profiles", "apply", str(profile)).returncode == 0
            wait_for(
                lambda: "less than the profile's retention of 48 h" in agent.log.read_text(),
                30,
                "the agent's warning about its capacity",
            )
            with Buffer(path) as buf:
                assert (buf.cap_bytes, buf.policy) == (1024 * 1024, Policy.DROP_NEWEST)
    finally:
        ctl.close()
        db.dispose()
