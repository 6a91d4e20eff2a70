"""Fixtures shared by the whole suite: databases (SQLite and PostgreSQL), prepared
controller data directories, in-process apps and real controller processes."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from edgefleet.controller.bootstrap import Prepared, prepare
from edgefleet.controller.settings import Settings, load_settings

PG_URL = os.environ.get(
    "EDGEFLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_available() -> None:
    problem = _postgres_reachable()
    if problem is None:
        return
    message = (
        f"PostgreSQL is not reachable at {PG_URL} ({problem}); start it, or set "
        "EDGEFLEET_TEST_POSTGRES_URL (`make test` expects it on 127.0.0.1:5432, database test)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def postgres_url(postgres_available: None) -> Iterator[str]:
    """A fresh schema of its own in the shared test database, dropped afterwards."""
    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Every database-facing test runs on both; None means the SQLite default."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return load_settings(
        data_dir=tmp_path / "controller",
        database_url=database_url,
        device_interval_seconds=1,
        last_seen_flush_seconds=0.2,
        gitops_debounce_seconds=0.2,
    )


@pytest.fixture
def prepared(settings: Settings) -> Prepared:
    return prepare(settings)


@pytest.fixture
def api(settings: Settings, prepared: Prepared) -> Iterator[object]:
    """The real app in process, with the first admin's token."""
    from fastapi.testclient import TestClient

    from edgefleet.controller.app import create_app
    from tests.support.apiclient import Api

    app = create_app(settings)
    with TestClient(app, base_url="https://testserver") as client:
        assert prepared.new_admin_token is not None
        yield Api(client, prepared.new_admin_token, prepared.controller_id)
    app.state.rt.engine.dispose()


@pytest.fixture
def agents() -> Iterator[list[object]]:
    """Real agent processes a test starts; each is stopped when the test ends."""
    started: list[object] = []
    yield started
    for agent in started:
        agent.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium under Playwright, one per test module (tests/support/browser.py)."""
    from tests.support.browser import launch

    yield from launch()
