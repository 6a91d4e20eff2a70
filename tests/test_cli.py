"""The operator CLI against the real app (in process): every listing has --output json,
errors end with the controller's message and exit code 1, secrets are shown once."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from tests.support.apiclient import Api

runner = CliRunner()


class _Cli:
    def __init__(self, api: Api) -> None:
        self.api = api

    def __call__(self, *args: str, token: str | None = None) -> object:
        g = Globals("https://testserver", token or self.api.admin, None)
        g.transport = self.api.client._transport  # the real app, in process
        return runner.invoke(app, list(args), obj=g, catch_exceptions=False)


@pytest.fixture
def cli(api: Api) -> _Cli:
    return _Cli(api)


def test_tokens_create_writes_registration_file_once(cli: _Cli, tmp_path: Path) -> None:
    assert cli("sites", "create", "shop-1", "--timezone", "Europe/Berlin").exit_code == 0
    reg = tmp_path / "registration.yaml"
    out = cli(
        "tokens",
        "create",
        "--site",
        "shop-1",
        "--uses",
        "5",
        "--expires",
        "2d",
        "--label",
        "tier=gold",
        "--registration",
        str(reg),
    )
    assert out.exit_code == 0, out.output
    doc = yaml.safe_load(reg.read_text())
    assert set(doc) == {"controller_url", "controller_id", "root_pins", "token"}
    assert doc["token"] in out.output
    assert stat.S_IMODE(os.stat(reg).st_mode) == 0o600
    listed = cli("tokens", "list", "--output", "json")
    tokens = json.loads(listed.output)
    assert [(t["max_uses"], t["labels"]) for t in tokens] == [(5, {"tier": "gold"})]
    assert doc["token"] not in listed.output


def test_every_listing_speaks_json(cli: _Cli, api: Api) -> None:
    api.site()
    tok = api.token()
    dev = api.device(tok["token"], serial="SN-1")
    for args in (
        ["devices", "list"],
        ["tokens", "list"],
        ["users", "list"],
        ["sites", "list"],
        ["profiles", "list"],
    ):
        out = cli(*args, "--output", "json")
        assert out.exit_code == 0, (args, out.output)
        assert isinstance(json.loads(out.output), list), args
    devices = json.loads(cli("devices", "list", "--output", "json", "--site", "shop-1").output)
    assert [d["id"] for d in devices] == [dev.id]
    shown = json.loads(cli("devices", "show", dev.id, "--output", "json").output)
    assert shown["serial"] == "SN-1"


def test_devices_filter_by_state_and_label(cli: _Cli, api: Api) -> None:
    api.site()
    gold = api.token(labels={"tier": "gold"})
    plain = api.token(require_approval=True)
    g = api.device(gold["token"])
    waiting = api.enrol(plain["token"]).json()["device_id"]
    by_label = json.loads(cli("devices", "list", "--label", "tier=gold", "-o", "json").output)
    assert [d["id"] for d in by_label] == [g.id]
    by_state = json.loads(
        cli("devices", "list", "--state", "awaiting_approval", "-o", "json").output
    )
    assert [d["id"] for d in by_state] == [waiting]
    out = cli("devices", "approve", waiting, "-o", "json")
    assert json.loads(out.output)["state"] == "enrolled"


def test_errors_end_with_controller_message_and_exit_1(cli: _Cli) -> None:
    out = cli("tokens", "create", "--site", "nowhere")
    assert out.exit_code == 1
    assert "no site 'nowhere'" in out.output
    bad = cli("devices", "list", "--state", "sleeping")
    assert bad.exit_code == 1 and "unknown state" in bad.output


def test_users_create_shows_token_once_and_disable_locks_out(cli: _Cli, api: Api) -> None:
    out = cli("users", "create", "vera", "--role", "viewer", "-o", "json")
    assert out.exit_code == 0, out.output
    token = json.loads(out.output)["api_token"]
    assert cli("devices", "list", token=token).exit_code == 0
    denied = cli("tokens", "create", "--site", "x", token=token)
    assert denied.exit_code == 1 and "role viewer" in denied.output
    assert cli("users", "disable", "vera").exit_code == 0
    locked = cli("devices", "list", token=token)
    assert locked.exit_code == 1 and "disabled" in locked.output
    users = json.loads(cli("users", "list", "-o", "json").output)
    assert {u["username"]: u["disabled"] for u in users} == {"admin": False, "vera": True}
    assert "api_token" not in json.dumps(users)


def test_installer_needs_a_site(cli: _Cli, api: Api) -> None:
    out = cli("users", "create", "ines", "--role", "installer")
    assert out.exit_code == 1 and "installer needs --site" in out.output
    api.site("shop-9")
    assert cli("users", "create", "ines", "--role", "installer", "--site", "shop-9").exit_code == 0


def test_profiles_apply_makes_revision_only_when_content_changes(cli: _Cli, tmp_path: Path) -> None:
    f = tmp_path / "retail.yaml"
    f.write_text("name: retail\nconfig:\n  camera: front\n")
    first = json.loads(cli("profiles", "apply", str(f), "-o", "json").output)
    same = json.loads(cli("profiles", "apply", str(f), "-o", "json").output)
    f.write_text("name: retail\nconfig:\n  camera: back\n")
    changed = json.loads(cli("profiles", "apply", str(f), "-o", "json").output)
    assert (first["revision"], same["revision"], changed["revision"]) == (1, 1, 2)
    assert (first["created_revision"], same["created_revision"]) == (True, False)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    out = cli("profiles", "apply", str(broken))
    assert out.exit_code == 1 and "cannot read" in out.output


def test_missing_controller_url_says_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EDGEFLEET_URL", raising=False)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "none.yaml"))
    out = runner.invoke(app, ["devices", "list"])
    assert out.exit_code == 1
    assert "edgefleet login" in out.output
