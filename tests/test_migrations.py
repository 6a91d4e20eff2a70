"""Alembic migrations match the models, on SQLite and PostgreSQL, and upgrade twice safely."""

from __future__ import annotations

from alembic import command
from alembic.util.exc import CommandError

from edgefleet.controller.db import alembic_config, make_engine, migrate
from edgefleet.controller.settings import Settings


def test_schema_from_migrations_matches_models(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    migrate(engine)  # idempotent: every start runs it
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.check(cfg)
    except CommandError as exc:  # pragma: no cover - the failure message is the point
        raise AssertionError(f"models changed without a migration: {exc}") from exc
    finally:
        engine.dispose()
