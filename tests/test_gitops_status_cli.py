"""A K3s device's report of its site's Flux/Argo CD status reaches ``devices show``, through
the real app (in process): the controller keeps the status as the device sent it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from tests.support.apiclient import Api

GITOPS = {
    "applier": "flux",
    "synced": False,
    "healthy": True,
    "revision": "main@sha1:0a1b2c",
    "message": "kustomize build failed: no such file",
}


def test_devices_show_says_what_the_sites_applier_reported(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    api.login(dev)
    r = api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json={"gitops": GITOPS})
    assert r.status_code == 200, r.text
    g = Globals("https://testserver", api.admin, None)
    g.transport = api.client._transport

    def cli(*args: str) -> str:
        out = CliRunner().invoke(app, list(args), obj=g, catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return out.output

    shown = json.loads(cli("devices", "show", dev.id, "--output", "json"))
    assert shown["status"]["gitops"] == GITOPS
    text = " ".join(cli("devices", "show", dev.id).split())
    assert (
        "gitops: flux not synced, healthy, revision main@sha1:0a1b2c: kustomize build failed: "
        "no such file"
    ) in text


def test_a_status_with_an_unknown_applier_is_refused(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    api.login(dev)
    body = {"gitops": {**GITOPS, "applier": "rancher-fleet"}}
    r = api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=body)
    assert r.status_code in (400, 422), r.text
