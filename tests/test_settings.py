"""One settings object per process: flags beat EDGEFLEET_* env, env beats the config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.controller.settings import load_settings


def test_flag_beats_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "edgefleet.yaml"
    cfg.write_text("port: 1111\nworkers: 3\ndevice_interval_seconds: 30\n")
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(cfg))
    monkeypatch.setenv("EDGEFLEET_PORT", "2222")
    s = load_settings(workers=5)
    assert (s.port, s.workers, s.device_interval_seconds) == (2222, 5, 30)


def test_sqlite_in_data_dir_unless_database_url(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    assert s.effective_database_url == f"sqlite:///{tmp_path.resolve()}/edgefleet.db"
    pg = load_settings(data_dir=tmp_path, database_url="postgresql://u@h/db")
    assert pg.effective_database_url == "postgresql://u@h/db"


def test_unknown_setting_in_file_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "edgefleet.yaml"
    cfg.write_text("prot: 1\n")
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(cfg))
    with pytest.raises(ValidationError, match="prot"):
        load_settings()
