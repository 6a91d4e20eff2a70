"""The outbox of update reports against a real controller (through a FaultProxy):
reports survive a restart, go oldest first, wait while the controller is unreachable,
and a report whose answer was lost is stored once; evidence of any size is cut to fit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.agent.client import ControllerClient, Unreachable
from edgefleet.agent.clock import Clock
from edgefleet.agent.reports import REFUSED_DIR, Outbox, fit_evidence
from edgefleet.agent.trust import ssl_context
from edgefleet.errors import PayloadTooLarge, Unavailable
from edgefleet.signing import make_assertion
from edgefleet.wire import (
    MAX_EVIDENCE_BYTES,
    UpdateAck,
    UpdateOutcome,
    UpdateReport,
    UpdateResult,
)
from tests.support.apiclient import csr_for, new_key
from tests.support.faultproxy import FaultProxy
from tests.support.processes import ControllerProcess

T0 = datetime(2030, 3, 1, 10, 0, tzinfo=UTC)


def report(revision: int, outcome: UpdateResult = UpdateResult.rolled_back) -> UpdateReport:
    started = T0 + timedelta(minutes=revision)
    return UpdateReport(
        outcome=UpdateOutcome(
            revision=revision,
            outcome=outcome,
            slot="B",
            reason=f"revision {revision}: probe differs",
            started_at=started,
            finished_at=started + timedelta(seconds=9),
        ),
        evidence=fit_evidence({"log": [f"attempt {revision}"]}),
    )


class Device:
    """One enrolled device of a real controller, reached through a FaultProxy."""

    def __init__(self, ctl: ControllerProcess, proxy: FaultProxy) -> None:
        self.ctl = ctl
        with ctl.client() as c:
            c.post("/sites", json={"name": "shop-1"}).raise_for_status()
            token = c.post("/tokens", json={"site": "shop-1"}).json()["token"]
            key = new_key()
            enrolled = c.post("/enrol", json={"token": token, "csr": csr_for(key)})
            self.id = enrolled.json()["device_id"]
            audience = (ctl.data_dir / "controller-id").read_text().strip()
            assertion = make_assertion(key, self.id, audience)
            answer = c.post("/auth/token", json={"client_assertion": assertion})
            self.access_token = answer.json()["access_token"]
        roots = ssl_context(Path(ctl.ca).read_text())
        self.client = ControllerClient(f"https://127.0.0.1:{proxy.port}", roots, Clock(), 3.0)

    def send(self, r: UpdateReport) -> object:
        return self.client.report_update(self.id, self.access_token, r)

    def stored(self) -> list[tuple[int, str]]:
        with self.ctl.client() as c:
            rows = c.get("/updates", params={"device": self.id}).json()
        return [(u["revision"], u["outcome"]) for u in reversed(rows)]  # oldest first


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[Device, FaultProxy]]:
    ctl = ControllerProcess(tmp_path / "ctl", workers=1).start()
    proxy = FaultProxy(ctl.port)
    try:
        dev = Device(ctl, proxy)
        yield dev, proxy
        dev.client.close()
    finally:
        proxy.close()
        ctl.close()


def test_reports_wait_while_unreachable_survive_a_restart_and_go_oldest_first(
    device: tuple[Device, FaultProxy], tmp_path: Path
) -> None:
    dev, proxy = device
    state = tmp_path / "agent"
    outbox = Outbox(state)
    for revision in (3, 1, 2):  # put in this order: sent in this order
        outbox.put(report(revision))
    proxy.refuse()
    with pytest.raises(Unreachable):
        outbox.flush(dev.send)
    assert len(outbox.pending()) == 3 and dev.stored() == []

    # The agent restarts: a new outbox over the same folder finds every report.
    proxy.forward()
    assert Outbox(state).flush(dev.send) == 3
    assert Outbox(state).pending() == []
    assert dev.stored() == [(3, "rolled_back"), (1, "rolled_back"), (2, "rolled_back")]


def test_a_failure_stops_the_flush_and_keeps_the_reports_behind_it(
    device: tuple[Device, FaultProxy], tmp_path: Path
) -> None:
    dev, proxy = device
    outbox = Outbox(tmp_path / "agent")
    for revision in (1, 2, 3):
        outbox.put(report(revision))

    def send_then_lose_the_network(r: UpdateReport) -> object:
        answer = dev.send(r)
        proxy.refuse()
        return answer

    with pytest.raises(Unreachable):
        outbox.flush(send_then_lose_the_network)
    assert dev.stored() == [(1, "rolled_back")]
    assert [p.name.endswith(("-r2.json", "-r3.json")) for p in outbox.pending()] == [True, True]
    proxy.forward()
    assert outbox.flush(dev.send) == 2
    assert dev.stored() == [(1, "rolled_back"), (2, "rolled_back"), (3, "rolled_back")]


def test_a_report_whose_answer_was_lost_is_stored_once(
    device: tuple[Device, FaultProxy], tmp_path: Path
) -> None:
    dev, _proxy = device
    outbox = Outbox(tmp_path / "agent")
    outbox.put(report(7, UpdateResult.committed))
    acks: list[UpdateAck] = []

    def stored_but_answer_lost(r: UpdateReport) -> None:
        acks.append(dev.send(r))
        raise Unreachable("the connection dropped before the answer arrived")

    with pytest.raises(Unreachable):
        outbox.flush(stored_but_answer_lost)
    assert len(outbox.pending()) == 1 and dev.stored() == [(7, "committed")]
    assert outbox.flush(lambda r: acks.append(dev.send(r))) == 1 and outbox.pending() == []
    assert dev.stored() == [(7, "committed")]
    assert [(a.id, a.created) for a in acks] == [(acks[0].id, True), (acks[0].id, False)]


def test_a_report_refused_for_good_is_set_aside_and_the_rest_go_on(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    first = outbox.put(report(1))
    outbox.put(report(2))
    sent: list[int] = []

    def send(r: UpdateReport) -> None:
        if r.outcome.revision == 1:
            raise PayloadTooLarge("request bodies are limited to 65536 bytes")
        sent.append(r.outcome.revision)

    assert outbox.flush(send) == 1 and sent == [2] and outbox.pending() == []
    assert (tmp_path / "outbox" / REFUSED_DIR / first.name).is_file()

    outbox.put(report(3))
    (tmp_path / "outbox" / "00000000000000000000-r0.json").write_text('{"outcome": "torn"}')

    def busy(r: UpdateReport) -> None:
        raise Unavailable("the controller is busy", retry_after=1)

    with pytest.raises(Unavailable):  # a passing trouble: stop, keep everything
        outbox.flush(busy)
    assert [p.name[-8:] for p in outbox.pending()] == ["-r3.json"]
    assert (tmp_path / "outbox" / REFUSED_DIR / "00000000000000000000-r0.json").is_file()


def test_evidence_of_any_size_is_cut_to_fit_keeping_the_newest_log_lines() -> None:
    lines = [f"{i:05d} " + "x" * 300 for i in range(2000)]
    evidence = fit_evidence(
        {
            "failed_checks": [
                {"name": "exec", "detail": "d" * 5000, "output": "o" * 50_000 + "END"}
            ],
            "latency": [{"model": "m", "samples_ms": [1.5] * 5000, "budget_ms": 50}],
            "log": lines,
        }
    )
    assert len(evidence.model_dump_json()) <= MAX_EVIDENCE_BYTES
    assert evidence.log[-1] == lines[-1] and evidence.log == lines[-len(evidence.log) :]
    assert evidence.failed_checks[0].output.endswith("END")
    assert len(evidence.failed_checks[0].detail) == 2048
    small = {"log": ["one", "two"], "latency": [{"model": "m", "samples_ms": [1.0, 2.0]}]}
    assert fit_evidence(small).model_dump(exclude_defaults=True) == small
    json.loads(UpdateReport(outcome=report(1).outcome, evidence=evidence).model_dump_json())
