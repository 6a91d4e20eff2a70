"""Settings and the registration file: mistakes an installer can fix from the message alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgefleet.agent.registration import load_registration, parse_registration
from edgefleet.agent.settings import (
    REGISTRATION_SEARCH_PATH,
    Settings,
    load_settings,
    registration_candidates,
)
from edgefleet.errors import ConfigError

PIN = "sha256:" + "ab" * 32
GOOD = {
    "controller_url": "https://fleet.example:8443/",
    "controller_id": "fleet-1",
    "root_pins": [PIN],
    "token": "tok",
}


def _text(**changes: object) -> str:
    data = {**GOOD, **changes}
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None})


def test_registration_with_a_missing_field_names_the_field():
    with pytest.raises(ConfigError, match="field controller_id is missing"):
        parse_registration(_text(controller_id=None), "reg.yaml")


def test_registration_with_a_malformed_pin_names_root_pins():
    with pytest.raises(ConfigError, match=r"root_pins.*sha256:<64 hex digits>"):
        parse_registration(_text(root_pins=["md5:1234"]), "reg.yaml")


def test_registration_with_plain_http_is_refused():
    with pytest.raises(ConfigError, match="controller_url must be an https"):
        parse_registration(_text(controller_url="http://fleet.example"), "reg.yaml")


def test_registration_with_an_unknown_field_names_it():
    with pytest.raises(ConfigError, match="field tokne is not a registration field"):
        parse_registration(_text(tokne="x"), "reg.yaml")


def test_registration_normalises_url_and_pins():
    reg = parse_registration(_text(root_pins=[PIN.upper().replace("SHA256", "sha256")]), "r")
    assert reg.controller_url == "https://fleet.example:8443"
    assert reg.root_pins == [PIN]


def test_missing_registration_says_where_it_looked(tmp_path: Path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    with pytest.raises(ConfigError) as info:
        load_registration([first, second])
    assert str(first) in info.value.message and str(second) in info.value.message
    assert "--registration" in info.value.message


def test_registration_search_path_is_env_then_etc_then_boot(tmp_path: Path):
    env_file = tmp_path / "reg.yaml"
    from_env = load_settings({}, env={"EDGEFLEET_AGENT_REGISTRATION": str(env_file)})
    assert registration_candidates(from_env) == [env_file]
    assert registration_candidates(load_settings({}, env={})) == list(REGISTRATION_SEARCH_PATH)
    assert [str(p) for p in REGISTRATION_SEARCH_PATH] == [
        "/etc/edgefleet/registration.yaml",
        "/boot/edgefleet/registration.yaml",
        "/boot/firmware/edgefleet/registration.yaml",
    ]


def test_flags_beat_env_beat_config_file(tmp_path: Path):
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump({"serial": "from-file", "hardware_id": "from-file", "state_dir": "/f"})
    )
    env = {"EDGEFLEET_AGENT_SERIAL": "from-env", "EDGEFLEET_AGENT_HARDWARE_ID": "from-env"}
    s = load_settings({"serial": "from-flag", "hardware_id": None}, env=env, config=config)
    assert (s.serial, s.hardware_id, s.state_dir) == ("from-flag", "from-env", Path("/f"))
    assert load_settings({}, env={}) == Settings()


def test_config_file_from_env_with_an_unknown_key_names_it(tmp_path: Path):
    config = tmp_path / "agent.yaml"
    config.write_text("state_dri: /var/lib/x\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*state_dri"):
        load_settings({}, env={"EDGEFLEET_AGENT_CONFIG": str(config)})


def test_unusable_number_names_the_setting():
    with pytest.raises(ConfigError, match="backoff_cap"):
        load_settings({}, env={"EDGEFLEET_AGENT_BACKOFF_CAP": "soon"})
