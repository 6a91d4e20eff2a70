"""Results older than ``results_retention_days`` are deleted in batches, the rest kept;
unset, nothing is deleted; a retention shorter than an agent's buffer is refused."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from edgefleet.controller import results_retention
from edgefleet.controller.models import Result
from edgefleet.controller.settings import load_settings
from tests.support.apiclient import Api, TestDevice

NOW = datetime.now(UTC)


def upload(api: Api, dev: TestDevice, ages_days: list[float], epoch: str) -> None:
    """Results dated ``ages_days`` before now by the device's wall clock."""
    records = [
        {
            "seq": i + 1,
            "wall": (NOW - timedelta(days=age)).timestamp(),
            "mono": 0.0,
            "digest": "sha256:" + "ab" * 32,
            "payload": json.dumps({"n": i}),
        }
        for i, age in enumerate(ages_days)
    ]
    body = {"epoch": epoch, "wall": time.time(), "mono": 5000.0, "records": records}
    r = api.call("POST", f"/devices/{dev.id}/results", dev.access_token, json=body)
    assert r.status_code == 200, r.text


def stored(api: Api) -> list[Any]:
    engine = api.client.app.state.rt.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return list(conn.execute(select(Result.seq, Result.time).order_by(Result.seq)).all())


def test_results_older_than_the_retention_go_in_batches_and_newer_stay(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.site("shop-1")
    dev = api.device(api.token()["token"])
    ages = [40, 31, 30.5, 29.9, 5, 0.1] * 3
    upload(api, dev, ages, epoch="00000000000000e1")
    engine = api.client.app.state.rt.engine  # type: ignore[attr-defined]
    monkeypatch.setattr(results_retention, "PRUNE_BATCH", 4)  # several transactions
    gone = results_retention.prune(engine, NOW - timedelta(days=30))
    assert gone == 9
    kept = stored(api)
    assert len(kept) == 9
    cutoff = NOW - timedelta(days=30)
    assert all(t.replace(tzinfo=t.tzinfo or UTC) >= cutoff for _seq, t in kept)
    assert results_retention.prune(engine, NOW - timedelta(days=30)) == 0, "pruned twice"


def test_a_run_stops_at_its_budget_and_the_next_goes_on(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.site("shop-1")
    dev = api.device(api.token()["token"])
    upload(api, dev, [60] * 10, epoch="00000000000000e2")
    engine = api.client.app.state.rt.engine  # type: ignore[attr-defined]
    monkeypatch.setattr(results_retention, "PRUNE_BATCH", 3)
    assert results_retention.prune(engine, NOW, budget_seconds=0.0) == 3, "one batch at least"
    assert results_retention.prune(engine, NOW) == 7
    assert stored(api) == []


def test_a_retention_shorter_than_an_agents_buffer_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ValidationError, match="results_retention_days"):
        load_settings(data_dir=tmp_path, results_retention_days=1)
    assert load_settings(data_dir=tmp_path).results_retention_days is None
    assert load_settings(data_dir=tmp_path, results_retention_days=3).results_retention_days == 3


def test_without_a_retention_nothing_is_deleted(api: Api) -> None:
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    assert rt.settings.results_retention_days is None
    api.site("shop-1")
    dev = api.device(api.token()["token"])
    upload(api, dev, [400, 1], epoch="00000000000000e3")
    asyncio.run(asyncio.wait_for(results_retention.run(rt), 1))  # returns at once
    assert len(stored(api)) == 2


def test_a_controller_with_a_retention_deletes_old_results_by_itself(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from edgefleet.controller.app import create_app
    from edgefleet.controller.bootstrap import prepare

    monkeypatch.setattr(results_retention, "EVERY_SECONDS", 0.1)
    settings = load_settings(
        data_dir=tmp_path / "controller", results_retention_days=30, device_interval_seconds=1
    )
    prepared = prepare(settings)
    app = create_app(settings)
    with TestClient(app, base_url="https://testserver") as client:
        assert prepared.new_admin_token is not None
        api = Api(client, prepared.new_admin_token, prepared.controller_id)
        api.site("shop-1")
        dev = api.device(api.token()["token"])
        upload(api, dev, [45, 31, 2, 0.5], epoch="00000000000000e4")
        deadline = time.monotonic() + 10
        while len(stored(api)) != 2:
            assert time.monotonic() < deadline, f"old results still there: {stored(api)}"
            time.sleep(0.1)
        metrics = client.get("/metrics").text
        assert "edgefleet_results_pruned_total 2.0" in metrics
    app.state.rt.engine.dispose()
