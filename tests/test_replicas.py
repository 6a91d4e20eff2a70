"""Several controller replicas over one PostgreSQL: every cache (credential generations,
decommissions, desired-state ETags) follows the generation counter announced with
LISTEN/NOTIFY, so no replica answers from a stale view.

Two real controller processes (two workers each) share the database and the identity
(PKI, access-token key, controller id), as replicas on two hosts do. A few in-process
tests hold the cache listener down on purpose, which a real process cannot be made to do
on cue.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from sqlalchemy import event

from edgefleet.controller.pgnotify import CHANNEL, LISTENER_NAME, PgEpoch
from edgefleet.signing import make_assertion
from tests.support.apiclient import Api, csr_for, new_key
from tests.support.apiclient import TestDevice as Device
from tests.support.processes import AgentProcess, ControllerProcess, wait_for
from tests.support.sqlwatch import request_statements

pytestmark = pytest.mark.usefixtures("postgres_available")

PROPAGATION_BUDGET_S = 1.0


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """The in-process tests here are about PostgreSQL only."""
    return postgres_url


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_url: str
) -> Iterator[tuple[ControllerProcess, ControllerProcess]]:
    a = ControllerProcess(tmp_path / "a", database_url=postgres_url, device_interval_seconds=1)
    b: ControllerProcess | None = None
    try:
        a.start()
        b = a.replica(tmp_path / "b").start()
        yield a, b
    finally:
        for ctl in (b, a):
            if ctl is not None:
                ctl.close()


# -- helpers: devices speaking to a replica over HTTPS ----------------------------------


def _token(ctl: ControllerProcess, profile_spec: dict[str, Any] | None = None) -> str:
    with ctl.client() as c:
        c.post("/sites", json={"name": "shop-1"}).raise_for_status()
        body: dict[str, Any] = {"site": "shop-1"}
        if profile_spec is not None:
            c.post("/profiles", json={"name": "retail", "spec": profile_spec}).raise_for_status()
            body["profile"] = "retail"
        r = c.post("/tokens", json=body)
        r.raise_for_status()
        return str(r.json()["token"])


def _device(ctl: ControllerProcess, token: str, login_at: ControllerProcess) -> Device:
    """Enrolled through ``ctl``; its access token issued by ``login_at``."""
    key = new_key()
    with ctl.client() as c:
        r = c.post("/enrol", json={"token": token, "csr": csr_for(key), "inventory": {}})
        r.raise_for_status()
    dev = Device(r.json()["device_id"], key)
    controller_id = (ctl.data_dir / "controller-id").read_text().strip()
    with login_at.client() as c:
        r = c.post(
            "/auth/token", json={"client_assertion": make_assertion(key, dev.id, controller_id)}
        )
        r.raise_for_status()
    dev.access_token = r.json()["access_token"]
    return dev


def _device_client(ctl: ControllerProcess, dev: Device) -> httpx.Client:
    """One keep-alive connection, as a device holds it; several land on several workers."""
    return httpx.Client(
        base_url=ctl.url + "/api/v1",
        verify=ssl.create_default_context(cafile=ctl.ca),
        headers=dev.bearer,
        timeout=10,
    )


def _desired(c: httpx.Client, dev: Device, etag: str | None = None) -> httpx.Response:
    headers = {"if-none-match": etag} if etag else {}
    return c.get(f"/devices/{dev.id}/desired", headers=headers)


def _worker_pids(ctl: ControllerProcess) -> set[int]:
    """Children of the controller's supervisor: its workers (and a resource tracker)."""
    assert ctl.proc is not None
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ctl.proc.pid:
                found.add(int(entry.name))
    return found


def _listener_backends(url: str, pids: set[int]) -> list[int]:
    names = [f"{LISTENER_NAME}/{pid}" for pid in pids]
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)", (names,)
        ).fetchall()
    return [r[0] for r in rows]


def _terminate(url: str, backends: list[int]) -> None:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        for pid in backends:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _generation(url: str) -> int:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        row = conn.execute("SELECT generation FROM cachegeneration WHERE id = 1").fetchone()
    assert row is not None
    return int(row[0])


def _refused_within(
    clients: list[httpx.Client], dev: Device, etag: str, stale: list[int] | None = None
) -> list[float]:
    """Poll every connection tightly from now; seconds until each refused the device
    (stale 304s counted into ``stale``)."""
    start = time.perf_counter()
    seconds: list[float | None] = [None] * len(clients)
    while None in seconds:
        for i, c in enumerate(clients):
            if seconds[i] is not None:
                continue
            r = _desired(c, dev, etag)
            if r.status_code == 304 and stale is not None:
                stale.append(i)
            if r.status_code != 304:
                assert r.status_code == 403, r.text
                assert r.json()["error"]["code"] == "device_decommissioned"
                seconds[i] = time.perf_counter() - start
        assert time.perf_counter() - start < 10, "replica B kept serving a decommissioned device"
    return [s for s in seconds if s is not None]


# -- two real replicas --------------------------------------------------------------------


def test_decommission_on_replica_a_is_refused_by_replica_b_within_a_second(
    replicas: tuple[ControllerProcess, ControllerProcess],
) -> None:
    a, b = replicas
    dev = _device(a, _token(a, {"config": {"camera": "front"}}), login_at=b)
    clients = [_device_client(b, dev) for _ in range(6)]
    try:
        etag = _desired(clients[0], dev).headers["etag"]
        for c in clients:  # every connection (and so both of B's workers) answers from cache
            assert _desired(c, dev, etag).status_code == 304
        with a.client() as op:
            op.post(f"/devices/{dev.id}/decommission").raise_for_status()
        stale: list[int] = []
        seconds = _refused_within(clients, dev, etag, stale)
        print(f"decommission on A refused by B after {max(seconds) * 1000:.1f} ms (worst)")
        assert max(seconds) < PROPAGATION_BUDGET_S, seconds
        # bump() waits for every live listener: not even one stale answer after the call.
        assert stale == [], f"{len(stale)} stale 304s from B after the decommission returned"
        controller_id = (a.data_dir / "controller-id").read_text().strip()
        r = clients[0].post(
            "/auth/token", json={"client_assertion": make_assertion(dev.key, dev.id, controller_id)}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (403, "device_decommissioned")
    finally:
        for c in clients:
            c.close()


def test_new_revision_applied_on_a_is_never_hidden_by_a_stale_304_on_b(
    replicas: tuple[ControllerProcess, ControllerProcess],
) -> None:
    a, b = replicas
    dev = _device(a, _token(a, {"config": {"n": 0}}), login_at=a)
    with _device_client(b, dev) as on_b, a.client() as op:
        etag = _desired(on_b, dev).headers["etag"]
        for n in range(1, 11):
            assert _desired(on_b, dev, etag).status_code == 304  # B holds it in memory
            applied = op.post("/profiles", json={"name": "retail", "spec": {"config": {"n": n}}})
            assert applied.json()["created_revision"] is True
            fresh = _desired(on_b, dev, etag)  # the very next request, no retry
            assert fresh.status_code == 200, f"revision {n + 1} hidden behind a stale 304 on B"
            assert (fresh.json()["revision"], fresh.json()["config"]) == (n + 1, {"n": n})
            assert fresh.headers["etag"] != etag
            etag = fresh.headers["etag"]


def test_agents_spread_over_both_replicas_enrol_and_a_decommission_on_a_stops_one_on_b(
    replicas: tuple[ControllerProcess, ControllerProcess],
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    a, b = replicas
    reg_a = a.registration(tmp_path / "reg-a.yaml", max_uses=10)
    doc = yaml.safe_load(reg_a.read_text())
    doc["controller_url"] = b.url
    reg_b = tmp_path / "reg-b.yaml"
    reg_b.write_text(yaml.safe_dump(doc))
    for i in range(10):
        agents.append(AgentProcess(reg_a if i % 2 else reg_b, tmp_path / f"agent-{i}", f"SN-{i}"))

    def ready_on(ctl: ControllerProcess) -> set[str]:
        out = ctl.cli("devices", "list", "--state", "ready", "--output", "json")
        assert out.returncode == 0, out.stderr
        return {d["id"] for d in json.loads(out.stdout)}

    ready = wait_for(lambda: len(ready_on(b)) == 10 and ready_on(b), 120, "10 agents ready")
    assert ready_on(a) == ready == {agent.state()["device_id"] for agent in agents}
    with a.client() as c:
        assert c.get("/tokens").json()[0]["uses"] == 10

    on_b, on_a = agents[0], agents[1]  # even agents talk to B, odd ones to A
    out = a.cli("devices", "decommission", on_b.state()["device_id"], "--output", "json")
    assert out.returncode == 0, out.stderr
    assert on_b.proc.wait(30) == 4
    assert on_b.state()["phase"] == "decommissioned"
    out = b.cli("devices", "decommission", on_a.state()["device_id"], "--output", "json")
    assert out.returncode == 0, out.stderr
    assert on_a.proc.wait(30) == 4
    assert all(agent.proc.poll() is None for agent in agents[2:])


def test_replica_whose_listener_is_killed_reconnects_and_never_serves_stale(
    replicas: tuple[ControllerProcess, ControllerProcess], postgres_url: str
) -> None:
    a, b = replicas
    token = _token(a, {"config": {"n": 0}})
    doomed = _device(a, token, login_at=b)
    kept = _device(a, token, login_at=b)
    clients = [_device_client(b, doomed) for _ in range(4)]
    try:
        etag = _desired(clients[0], doomed).headers["etag"]
        for c in clients:
            assert _desired(c, doomed, etag).status_code == 304
        workers = _worker_pids(b)
        before = wait_for(  # one listener per worker, each connected once its worker runs
            lambda: len(found := _listener_backends(postgres_url, workers)) == b.workers and found,
            10,
            "a listener from each of B's workers",
        )
        _terminate(postgres_url, before)
        with a.client() as op:  # at once: B's listeners are down or reconnecting
            op.post(f"/devices/{doomed.id}/decommission").raise_for_status()
        seconds = _refused_within(clients, doomed, etag)
        assert max(seconds) < PROPAGATION_BUDGET_S, seconds
        after = wait_for(
            lambda: len(found := _listener_backends(postgres_url, workers)) == b.workers and found,
            10,
            "B's workers to reconnect their listeners",
        )
        assert not set(after) & set(before)
    finally:
        for c in clients:
            c.close()
    # Reconnected, B again follows notifications: a new revision is seen at once.
    with _device_client(b, kept) as on_b, a.client() as op:
        etag = _desired(on_b, kept).headers["etag"]
        assert _desired(on_b, kept, etag).status_code == 304
        op.post("/profiles", json={"name": "retail", "spec": {"config": {"n": 1}}})
        assert _desired(on_b, kept, etag).status_code == 200


# -- in process: the listener held down on purpose -----------------------------------------


def _statements(api: Api) -> Any:
    return request_statements(api.client.app.state.rt.engine)  # type: ignore[attr-defined]


def _desired_in_process(api: Api, dev: Device, etag: str | None = None) -> Any:
    headers = {"if-none-match": etag} if etag else {}
    return api.call("GET", f"/devices/{dev.id}/desired", dev.access_token, headers=headers)


def _behind_the_epochs_back(url: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Another replica's commit and its notification (which a downed listener misses)."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn, conn.transaction():
        for sql, params in statements:
            conn.execute(sql, params)
        gen = conn.execute(
            "UPDATE cachegeneration SET generation = generation + 1 RETURNING generation"
        ).fetchone()
        assert gen is not None
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(gen[0])))


def test_while_the_listener_is_down_answers_come_from_the_database_and_reconnect_drops(
    api: Api, postgres_url: str
) -> None:
    epoch = api.client.app.state.rt.epoch  # type: ignore[attr-defined]
    assert isinstance(epoch, PgEpoch) and epoch.connected
    api.site("shop-1")
    api.profile("retail", {"config": {"n": 0}})
    token = api.token(profile="retail")["token"]
    first, second = api.device(token), api.device(token)
    etags = {d.id: _desired_in_process(api, d).headers["etag"] for d in (first, second)}
    with _statements(api) as sql:
        assert _desired_in_process(api, first, etags[first.id]).status_code == 304
    assert sql == [], "a cached 304 went to the database"

    epoch.retry_seconds = 3.0  # hold it down long enough to look at it
    _terminate(postgres_url, _listener_backends(postgres_url, {os.getpid()}))
    wait_for(lambda: not epoch.connected, 5, "the listener to notice", every=0.005)

    # Down: still correct, from the database. A change it never hears of is seen.
    with _statements(api) as sql:
        assert _desired_in_process(api, first, etags[first.id]).status_code == 304
    assert sql, "a worker without its listener answered from its cache"
    _behind_the_epochs_back(
        postgres_url,
        (
            "UPDATE device SET state = 'decommissioned', "
            "credential_generation = credential_generation + 1 WHERE id = %s",
            (second.id,),
        ),
    )
    assert _desired_in_process(api, second, etags[second.id]).status_code == 403
    # A cache entry loaded while down, then a change committed in the gap: the
    # reconnect must drop it.
    assert _desired_in_process(api, first, etags[first.id]).status_code == 304
    _behind_the_epochs_back(  # a new revision, as another replica applies it
        postgres_url,
        (
            "INSERT INTO profilerevision (profile_id, number, digest, spec, created_at, "
            "created_by) SELECT id, 2, 'x', %s, now(), 'test' FROM profile WHERE name = %s",
            (json.dumps({"config": {"n": 2}}), "retail"),
        ),
        ("UPDATE profile SET latest_revision = 2 WHERE name = %s", ("retail",)),
    )
    assert not epoch.connected, "the listener came back too early to test the gap"
    wait_for(lambda: epoch.connected, 10, "the listener to reconnect", every=0.01)
    fresh = _desired_in_process(api, first, etags[first.id])
    assert fresh.status_code == 200 and fresh.json()["revision"] == 2
    with _statements(api) as sql:  # and connected again, the cache serves
        assert _desired_in_process(api, first, fresh.headers["etag"]).status_code == 304
    assert sql == []


def test_a_read_that_straddles_a_drop_is_not_cached_after_it(api: Api, postgres_url: str) -> None:
    """A credential load reads the device, then a decommission commits and the caches
    drop before the load stores what it read: that stale read must not outlive the drop."""
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    api.site("shop-1")
    dev = api.device(api.token()["token"])
    rt.changed()  # start from empty caches
    fired: list[bool] = []

    def meanwhile(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if fired or "FROM device" not in statement:
            return
        fired.append(True)  # the row is read; now another replica decommissions it
        _behind_the_epochs_back(
            postgres_url,
            (
                "UPDATE device SET state = 'decommissioned', "
                "credential_generation = credential_generation + 1 WHERE id = %s",
                (dev.id,),
            ),
        )
        rt.changed()  # and the caches drop (forced here, not left to race the listener)

    event.listen(rt.engine, "after_cursor_execute", meanwhile)
    try:
        stale = rt.device_auth(dev.id)
    finally:
        event.remove(rt.engine, "after_cursor_execute", meanwhile)
    assert fired and stale is not None and stale.state.value != "decommissioned"
    assert rt.cached_auth(dev.id) is None, "a read from before the drop was cached after it"
    assert _desired_in_process(api, dev).status_code == 403


def test_a_strangers_notification_on_the_shared_channel_drops_nothing(
    api: Api, postgres_url: str
) -> None:
    api.site("shop-1")
    dev = api.device(api.token()["token"])
    etag = _desired_in_process(api, dev).headers["etag"]
    with psycopg.connect(_libpq(postgres_url), autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, '999999')", (CHANNEL,))  # another deployment's
    time.sleep(0.3)
    with _statements(api) as sql:
        assert _desired_in_process(api, dev, etag).status_code == 304
    assert sql == []


def test_hot_path_never_bumps_and_operator_changes_do(api: Api, postgres_url: str) -> None:
    """Enrolments, token exchanges, status reports and heartbeats leave the counter alone;
    decommission, approval and a new profile revision each move it once."""
    api.site("shop-1")
    api.profile("retail", {"config": {"n": 0}})
    token = api.token(profile="retail")["token"]
    start = _generation(postgres_url)
    devices = [api.device(token) for _ in range(5)]
    for dev in devices:
        api.login(dev)
        for body in ({"applied_revision": 1}, {"applied_revision": 1}, {"buffer": {"depth": 2}}):
            r = api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=body)
            assert r.status_code == 200, r.text
        assert _desired_in_process(api, dev).status_code == 200
    assert _generation(postgres_url) == start, "the device hot path bumped the cache epoch"

    api.ok("POST", f"/devices/{devices[0].id}/decommission", api.admin)
    assert _generation(postgres_url) == start + 1
    waiting = api.token(profile="retail", require_approval=True)["token"]
    claimed = api.enrol(waiting)
    assert claimed.status_code == 202
    assert _generation(postgres_url) == start + 1
    api.ok("POST", f"/devices/{claimed.json()['device_id']}/approve", api.admin)
    assert _generation(postgres_url) == start + 2
    api.profile("retail", {"config": {"n": 1}})
    assert _generation(postgres_url) == start + 3
    api.profile("retail", {"config": {"n": 1}})  # same spec: no revision, no bump
    assert _generation(postgres_url) == start + 3


def test_sqlite_keeps_the_file_epoch(tmp_path: Path) -> None:
    from edgefleet.controller.cachebus import FileEpoch, epoch_for
    from edgefleet.controller.db import make_engine
    from edgefleet.controller.settings import load_settings

    settings = load_settings(data_dir=tmp_path)
    engine = make_engine(settings.effective_database_url)
    try:
        assert isinstance(epoch_for(settings, engine), FileEpoch)
    finally:
        engine.dispose()
