"""The operator's replacement and naming commands against the real app in process
(SQLite and PostgreSQL): ``devices rename | replace | history``, ``devices list
--search`` with its NAME column, and ``tokens create --replaces``."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from tests.support.apiclient import Api

runner = CliRunner()


def cli(api: Api, *args: str) -> Any:
    g = Globals("https://testserver", api.admin, None)
    g.transport = api.client._transport  # the real app, in process
    return runner.invoke(app, list(args), obj=g, catch_exceptions=False)


def ok_json(api: Api, *args: str) -> Any:
    out = cli(api, *args, "-o", "json")
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def test_rename_search_replace_and_history(api: Api) -> None:
    api.site("shop-1")
    api.profile("vision", {"config": {"v": 1}})
    token = api.token(site="shop-1", profile="vision", labels={"zone": "front"})["token"]
    old = api.device(token, serial="SN-OLD")
    new = api.device(api.token(site="shop-1")["token"], serial="SN-NEW")

    renamed = ok_json(api, "devices", "rename", old.id, "till-3")
    assert renamed["name"] == "till-3"
    table = cli(api, "devices", "list")
    assert table.exit_code == 0 and "name" in table.stdout and "till-3" in table.stdout
    assert [d["id"] for d in ok_json(api, "devices", "list", "--search", "TILL")] == [old.id]
    assert [d["id"] for d in ok_json(api, "devices", "list", "-q", "sn-new")] == [new.id]

    refused = cli(api, "devices", "replace", old.id, old.id)
    assert refused.exit_code == 1 and "cannot replace itself" in refused.output
    taken = cli(api, "devices", "rename", new.id, "Till-3")
    assert taken.exit_code == 1 and "name_taken" in taken.output

    out = cli(api, "devices", "replace", old.id, new.id, "--reason", "water damage")
    assert out.exit_code == 0, out.output
    assert f"{old.id} was decommissioned; {new.id} took its place" in out.stdout
    assert "fleet repository" in out.stdout or "commit" in out.stdout
    shown = ok_json(api, "devices", "show", new.id)
    assert (shown["name"], shown["replaces"], shown["profile"]) == ("till-3", old.id, "vision")
    assert shown["labels"] == {"zone": "front"}
    assert ok_json(api, "devices", "show", old.id)["state"] == "decommissioned"

    history = cli(api, "devices", "history", new.id)
    assert history.exit_code == 0 and history.stdout.count("till-3") == 2
    lineage = ok_json(api, "devices", "history", new.id)["lineage"]
    assert [d["id"] for d in lineage] == [old.id, new.id]

    cleared = ok_json(api, "devices", "rename", new.id, "")
    assert cleared["name"] is None


def test_tokens_create_replaces(api: Api) -> None:
    api.site("shop-1")
    api.site("shop-2")
    api.profile("vision", {"config": {"v": 1}})
    old = api.device(api.token(site="shop-1", profile="vision")["token"])
    api.ok("POST", f"/devices/{old.id}/rename", api.admin, json={"name": "scale-1"})

    wrong = cli(api, "tokens", "create", "--replaces", old.id, "--site", "shop-2")
    assert wrong.exit_code == 1 and "other_site" in wrong.output
    many = cli(api, "tokens", "create", "--replaces", old.id, "--uses", "3")
    assert many.exit_code == 1 and "bad_uses" in many.output
    nosite = cli(api, "tokens", "create")
    assert nosite.exit_code == 1 and "no_site" in nosite.output

    made = ok_json(api, "tokens", "create", "--replaces", old.id)
    assert (made["site"], made["max_uses"], made["replaces"]) == ("shop-1", 1, old.id)
    listed = ok_json(api, "tokens", "list")
    assert [t["replaces"] for t in listed if t["kid"] == made["kid"]] == [old.id]
    new = api.device(made["token"])
    shown = ok_json(api, "devices", "show", new.id)
    assert (shown["name"], shown["replaces"], shown["profile"]) == ("scale-1", old.id, "vision")
