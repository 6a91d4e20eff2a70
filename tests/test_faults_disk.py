"""The controller's data directory fills up (issue 13): a small tmpfs holds the SQLite
database, the PKI and the fleet repositories of a real controller process; the test
fills it while a real agent uploads results, another enrols and an operator works.

What an operator relies on: a request the full disk stops gets a 507 that names the
data directory (no 500, no traceback to a client); nothing is half-written (SQLite's
``integrity_check``, ``git fsck`` of every fleet repository, no device row without its
certificate); once space is freed everything works again without a restart, and every
result the agent held arrives exactly once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

from tests.support.faults import fill, small_tmpfs
from tests.support.processes import AgentProcess, ControllerProcess, wait_for
from tests.test_results_faults import (
    Held,
    Producer,
    _agent_config,
    _check_delivered,
    _drained,
    _journal,
    _seed,
    _sqlite_url,
)

DISK_FULL = "disk_full"


def _operator_answers(ctl: ControllerProcess, n: int) -> list[tuple[str, int, dict]]:
    """What an operator's writes get: new tokens and a new profile revision."""
    answers = []
    with ctl.client() as c:
        for i in range(n):
            for what, r in (
                ("token", c.post("/tokens", json={"site": "shop-1", "profile": "vision"})),
                (
                    "profile",
                    c.post(
                        "/profiles",
                        json={
                            "name": "vision",
                            "spec": {"mode": "direct", "results": {"rate_per_second": 3 + i}},
                        },
                    ),
                ),
            ):
                answers.append((what, r.status_code, r.json()))
    return answers


def test_a_full_data_directory_answers_507_half_writes_nothing_and_recovers(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    seed = _seed()
    with small_tmpfs(tmp_path / "ctl", "16m") as data:
        ctl = ControllerProcess(
            data,
            workers=2,
            device_interval_seconds=1,
            last_seen_flush_seconds=0.2,
            gitops_debounce_seconds=0.2,
        )
        ctl.start()
        producer: Producer | None = None
        held: Held | None = None
        try:
            with ctl.client() as c:
                c.post(
                    "/profiles", json={"name": "vision", "spec": {"mode": "direct"}}
                ).raise_for_status()
            reg = ctl.registration(tmp_path / "registration.yaml", profile="vision")
            config = _agent_config(tmp_path / "agent.yaml")
            state = tmp_path / "dev-a"
            db = state / "results" / "results.db"
            journal = tmp_path / "journal.jsonl"
            producer = Producer(db, journal, 0, seed, interval=0.05)
            first = AgentProcess(reg, state, "SN-DISK-A", extra=["--config", str(config)])
            agents.append(first)
            device = wait_for(lambda: first.state().get("device_id"), 60, "enrolment")
            held = Held(_sqlite_url(ctl), device)
            wait_for(lambda: held.count() > 0, 60, "the first upload")

            ballast = fill(data)
            full_at = time.monotonic()
            print(f"filled {data}: {ballast.stat().st_size} bytes of ballast")
            wait_for(
                lambda: f"result upload failed ({DISK_FULL}: " in first.log.read_text(),
                60,
                "an upload refused for the full disk",
            )
            second = AgentProcess(
                reg, tmp_path / "dev-b", "SN-DISK-B", extra=["--config", str(config)]
            )
            agents.append(second)
            during = _operator_answers(ctl, 3)
            time.sleep(3)  # the second agent tries to enrol against the full disk
            refused = [a for a in during if a[1] == 507]
            print(
                f"while full: operator writes {[(w, s) for w, s, _ in during]}; "
                f"second agent: {second.state().get('phase')} {second.state().get('last_error')}"
            )
            for what, status, body in during:
                assert status in (200, 201, 507), f"{what}: {status} {body}"
            for _, _, body in refused:
                error = body["error"]
                assert error["code"] == DISK_FULL, error
                assert str(data) in error["message"] and "full" in error["message"], error
            for agent in (first, second):
                log = agent.log.read_text(errors="replace")
                assert "HTTP 500" not in log and "(internal:" not in log, log[-2000:]

            ballast.unlink()
            freed = time.monotonic()
            before = held.count()
            wait_for(lambda: held.count() > before, 60, "uploads after space was freed")
            uploads_back = time.monotonic() - freed
            wait_for(lambda: second.state().get("device_id"), 60, "the second enrolment")
            enrol_back = time.monotonic() - freed
            after = _operator_answers(ctl, 1)
            assert all(s in (200, 201) for _, s, _ in after), after
            with ctl.client() as c:
                wait_for(
                    lambda: c.get("/gitops").json()["pending"] == 0, 60, "the fleet repository"
                )
            print(
                f"full for {freed - full_at:.1f}s; {len(refused)} operator writes refused; "
                f"after freeing: uploads {uploads_back:.1f}s, enrolment {enrol_back:.1f}s"
            )

            producer.kill()
            local = _drained(db, held)
            _check_delivered(seed, _journal(journal), local, held)
            assert ctl.proc is not None and ctl.proc.poll() is None
            _check_nothing_half_written(data, ctl)
        finally:
            if producer is not None:
                producer.kill()
            if held is not None:
                held.close()
            for agent in agents:
                agent.stop()
            ctl.close()


def _check_nothing_half_written(data: Path, ctl: ControllerProcess) -> None:
    with closing(sqlite3.connect(f"file:{data / 'edgefleet.db'}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT serial, certificate_pem IS NOT NULL FROM device").fetchall()
    assert sorted(rows) == [("SN-DISK-A", 1), ("SN-DISK-B", 1)], rows
    repos = sorted((data / "gitops").glob("*.git"))
    assert repos, "no fleet repository"
    for repo in repos:
        done = subprocess.run(
            ["git", "--git-dir", str(repo), "fsck", "--full", "--strict"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"git fsck {repo}:\n{done.stdout}{done.stderr}"
    with ctl.client() as c:
        devices = {d["serial"]: d["id"] for d in c.get("/devices").json()}
        assert sorted(devices) == ["SN-DISK-A", "SN-DISK-B"], devices
        # The second device's desired state reached its directory in the fleet repository.
        tree = subprocess.run(
            ["git", "--git-dir", str(repos[0]), "ls-tree", "-r", "--name-only", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert all(dev in tree for dev in devices.values()), tree


def test_a_full_fleet_repository_disk_delays_the_commit_and_loses_nothing(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """The fleet repositories on a disk of their own that fills: the operator's change is
    stored and answered (the write is said to be pending, with why), devices in direct
    mode get it at once from the device API, and the commit lands, whole, once space is
    freed (the writer retries with a backoff)."""
    with small_tmpfs(tmp_path / "gitops", "4m") as repos:
        ctl = ControllerProcess(
            tmp_path / "ctl",
            workers=1,
            device_interval_seconds=1,
            gitops_debounce_seconds=0.2,
            gitops_root=repos,
        ).start()
        try:
            with ctl.client() as c:
                c.post(
                    "/profiles", json={"name": "vision", "spec": {"mode": "direct"}}
                ).raise_for_status()
                reg = ctl.registration(tmp_path / "registration.yaml", profile="vision")
                agent = AgentProcess(reg, tmp_path / "dev", "SN-GIT")
                agents.append(agent)
                device = wait_for(lambda: agent.state().get("device_id"), 60, "enrolment")
                wait_for(lambda: c.get("/gitops").json()["pending"] == 0, 30, "the first write")
                repo = next(repos.glob("*.git"))
                before = _git(repo, "rev-parse", "HEAD")

                ballast = fill(repos)
                r = c.post(
                    "/profiles",
                    json={"name": "vision", "spec": {"mode": "direct", "config": {"v": 2}}},
                )
                assert r.status_code in (200, 201), r.text
                answer = r.json()
                print(f"while the repositories' disk is full: {answer['gitops']}")
                assert answer["revision"] == 2 and answer["created_revision"]
                assert "No space left on device" in json.dumps(answer["gitops"]), answer
                status = c.get("/gitops").json()
                assert status["pending"] >= 1 and "No space left" in status["last_error"]
                # Direct mode does not wait for Git: the device runs the new revision.
                wait_for(
                    lambda: c.get(f"/devices/{device}").json()["applied_revision"] == 2,
                    30,
                    "the device to take revision 2 from the device API",
                )
                assert _git(repo, "rev-parse", "HEAD") == before

                ballast.unlink()
                freed = time.monotonic()
                wait_for(lambda: c.get("/gitops").json()["pending"] == 0, 90, "the commit")
                print(f"committed {time.monotonic() - freed:.1f}s after space was freed")
                subject = _git(repo, "log", "-1", "--format=%B")
                assert "revision 2" in subject, subject
                assert device in _git(repo, "show", "--stat", "--format=", "HEAD")
                _git(repo, "fsck", "--full", "--strict")
        finally:
            ctl.close()


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(repo), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"git {' '.join(args)} in {repo}:\n{done.stderr}"
    return done.stdout.strip()
