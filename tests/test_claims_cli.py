"""``edgefleet claims`` against the real app in process (SQLite and PostgreSQL): list
and show what a person compares, approve with site, profile, labels and name, reject
with a reason; refusals end with the controller's words and exit code 1."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from tests.support.apiclient import Api, csr_for, new_key

runner = CliRunner()


def cli(api: Api, *args: str, token: str | None = None) -> Any:
    g = Globals("https://testserver", token or api.admin, None)
    g.transport = api.client._transport  # the real app, in process
    return runner.invoke(app, list(args), obj=g, catch_exceptions=False)


def claim(api: Api, **inventory: Any) -> dict[str, Any]:
    r = api.call("POST", "/claims", json={"csr": csr_for(new_key()), "inventory": inventory})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_list_and_show_give_the_code_to_compare(api: Api) -> None:
    first = claim(api, serial="SN-1", hostname="till-3")
    second = claim(api, serial="SN-2")
    out = cli(api, "claims", "list", "--state", "pending")
    assert out.exit_code == 0, out.output
    for made in (first, second):
        assert made["id"] in out.output and made["code"] in out.output
    assert "SN-1" in out.output and "till-3" in out.output and "59m" in out.output
    assert out.output.index(second["id"]) < out.output.index(first["id"]), "newest first"

    listed = json.loads(cli(api, "claims", "list", "-o", "json").stdout)
    assert [c["id"] for c in listed] == [second["id"], first["id"]], "newest first"
    assert cli(api, "claims", "list", "--state", "approved").output.count("clm-") == 0

    out = cli(api, "claims", "show", first["id"])
    assert out.exit_code == 0 and first["code"] in out.output and "testclient" in out.output
    assert "till-3" in out.output and "remote_addr" in out.output
    shown = json.loads(cli(api, "claims", "show", first["id"], "-o", "json").stdout)
    assert shown["inventory"]["serial"] == "SN-1" and "secret" not in shown


def test_approve_enrols_the_device_with_what_was_given(api: Api) -> None:
    api.site("shop-1")
    api.profile("retail")
    made = claim(api, serial="SN-1")
    options = ["--site", "shop-1", "--profile", "retail", "--label", "lane=3", "--name", "till-3"]
    out = cli(api, "claims", "approve", made["id"], *options, "-o", "json")
    assert out.exit_code == 0, out.output
    approved = json.loads(out.stdout)
    assert (approved["state"], approved["site"], approved["profile"]) == (
        "approved",
        "shop-1",
        "retail",
    )
    assert approved["labels"] == {"lane": "3"} and approved["name"] == "till-3"
    device = api.ok("GET", f"/devices/{approved['device_id']}", api.admin)
    assert (device["state"], device["labels"]) == ("enrolled", {"lane": "3"})

    again = cli(api, "claims", "approve", made["id"], "--site", "shop-1")
    assert again.exit_code == 1
    assert "(claim_decided)" in again.output and "already approved by admin" in again.output


def test_reject_records_the_reason(api: Api) -> None:
    made = claim(api)
    out = cli(api, "claims", "reject", made["id"], "--reason", "not one of ours")
    assert out.exit_code == 0, out.output
    assert "rejected" in out.output and "not one of ours" in out.output
    status = api.call(
        "GET", f"/claims/{made['id']}/poll", headers={"authorization": f"Claim {made['secret']}"}
    ).json()
    assert status["state"] == "rejected" and status["message"].endswith("not one of ours")


def test_refusals_say_why_and_change_nothing(api: Api) -> None:
    api.site("shop-1")
    api.site("shop-2")
    made = claim(api)
    installer = api.user("inst", "installer", site="shop-1")
    out = cli(api, "claims", "approve", made["id"], "--site", "shop-2", token=installer)
    assert out.exit_code == 1 and "(other_site)" in out.output and "own site" in out.output
    out = cli(api, "claims", "approve", made["id"], "--site", "shop-1", "--label", "nolabel")
    assert out.exit_code == 1 and "must read key=value" in out.output
    out = cli(api, "claims", "approve", made["id"], "--site", "nowhere")
    assert out.exit_code == 1 and "no site 'nowhere'" in out.output
    out = cli(api, "claims", "show", "clm-missing")
    assert out.exit_code == 1 and "(unknown_claim)" in out.output
    out = cli(api, "claims", "list", "--state", "bogus")
    assert out.exit_code == 1 and "unknown claim state" in out.output
    assert api.ok("GET", f"/claims/{made['id']}", api.admin)["state"] == "pending"
    assert api.ok("GET", "/devices", api.admin) == []
