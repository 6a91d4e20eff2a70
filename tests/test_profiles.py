"""Cluster profiles: the schema refuses what nothing acts on (with the field's path and
nothing stored), revisions are immutable and numbered, the CLI checks before sending,
and assigning a profile changes a device's desired state at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgefleet import profilespec
from edgefleet.cli.app import app
from edgefleet.cli.common import Globals
from tests.support.apiclient import Api

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "profiles").glob("*.yaml"))
DIGEST = "sha256:" + "ab" * 32
MODEL = f"ghcr.io/acme/models/detector@{DIGEST}"
runner = CliRunner()


def cli(api: Api, *args: str, token: str | None = None) -> Any:
    g = Globals("https://testserver", token or api.admin, None)
    g.transport = api.client._transport  # the real app, in process
    return runner.invoke(app, list(args), obj=g, catch_exceptions=False)


def revisions(api: Api) -> dict[str, int]:
    return {p["name"]: p["revision"] for p in api.ok("GET", "/profiles", api.admin)}


# -- the schema ---------------------------------------------------------------------------


def test_packaged_schema_is_the_repository_schema() -> None:
    packaged = ROOT / "edgefleet" / "profile_schema.json"
    assert packaged.read_bytes() == (ROOT / "profiles" / "schema.json").read_bytes()
    assert profilespec.schema() == json.loads(packaged.read_text())


def test_there_are_three_worked_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "retail-vision-k3s.yaml",
        "clinic-gpu-k3s.yaml",
        "small-site-direct.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_and_applies(path: Path, api: Api) -> None:
    doc = yaml.safe_load(path.read_text())
    assert profilespec.errors(doc) == []
    name = doc.pop("name")
    applied = api.ok("POST", "/profiles", api.admin, json={"name": name, "spec": doc})
    assert (applied["revision"], applied["created_revision"]) == (1, True)


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        (
            {"models": [{"name": "m", "reference": "detector:latest"}]},
            "/models/0/reference",
            "is not a model reference",
        ),
        (
            {"models": [{"name": "m", "reference": "ghcr.io/acme/detector"}]},
            "/models/0/reference",
            "registry/repo:tag",
        ),
        (
            {"policies": {"health_checks": [{"type": "probe"}, {"type": "latency"}]}},
            "/policies/health_checks/1/p95_ms",
            "required field is missing",
        ),
        (
            {"policies": {"health_checks": [{"type": "probe", "p95_ms": 5}]}},
            "/policies/health_checks/0/p95_ms",
            "unknown field",
        ),
        (
            {"policies": {"health_checks": [{"type": "ping"}]}},
            "/policies/health_checks/0/type",
            "'ping' is not one of",
        ),
        (
            {"policies": {"health_checks": [{"url": "http://x/"}]}},
            "/policies/health_checks/0/type",
            "required field is missing",
        ),
        (
            {"policies": {"health_checks": [{"type": "http", "url": "ftp://cam/ready"}]}},
            "/policies/health_checks/0/url",
            "does not match",
        ),
        (
            {"policies": {"health_checks": [{"type": "exec", "command": "reboot"}]}},
            "/policies/health_checks/0/command",
            "is not of type 'array'",
        ),
        (
            {
                "policies": {
                    "health_checks": [{"type": "exec", "command": ["x"], "timeout_seconds": 0}]
                }
            },
            "/policies/health_checks/0/timeout_seconds",
            "less than or equal to the minimum of 0",
        ),
        ({"policies": {"max_attempts": 0}}, "/policies/max_attempts", "less than the minimum of 1"),
        (
            {"policies": {"health_deadline_seconds": "soon"}},
            "/policies/health_deadline_seconds",
            "is not of type 'number'",
        ),
        ({"update_window": "02:00-04:00"}, "/update_window", "unknown field"),
        ({"mode": "docker"}, "/mode", "'docker' is not one of ['k3s', 'direct']"),
        ({"policies": {"interval_seconds": "often"}}, "/policies/interval_seconds", "integer"),
        (
            {"applications": [{"name": "a"}]},
            "/applications/0",
            "exactly one of 'kustomize' or 'helm'",
        ),
        (
            {"applications": [{"name": "a", "kustomize": {"repository": "r", "path": "p"}}]},
            "/applications/0/kustomize/ref",
            "required field is missing",
        ),
        (
            {"models": [{"name": "m", "reference": MODEL}, {"name": "m", "reference": MODEL}]},
            "/models/1/name",
            "duplicate name 'm'",
        ),
        ({"labels": {"tier": 3}}, "/labels/tier", "is not of type 'string'"),
        ({"results": {"retention_hours": 0}}, "/results/retention_hours", "less than the minimum"),
        ({"results": {"policy": "random"}}, "/results/policy", "is not one of"),
        ({"results": {"max_bytes": 1000}}, "/results/max_bytes", "less than the minimum"),
    ],
)
def test_schema_refuses_with_path_and_reason_and_stores_nothing(
    api: Api, spec: dict[str, Any], path: str, reason: str
) -> None:
    api.profile("retail", {"config": {"camera": "front"}})
    before = revisions(api)
    r = api.call("POST", "/profiles", api.admin, json={"name": "retail", "spec": spec})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_profile"
    assert f"{path}: " in error["message"] and reason in error["message"], error["message"]
    r = api.call("POST", "/profiles", api.admin, json={"name": "fresh", "spec": spec})
    assert r.status_code == 422
    assert revisions(api) == before


def test_every_error_is_listed() -> None:
    doc = {"name": "x", "mode": "swarm", "extra": 1, "models": [{"name": "m"}]}
    assert profilespec.errors(doc) == [
        ("/extra", "unknown field: nothing acts on it yet, so it is refused rather than kept"),
        ("/mode", "'swarm' is not one of ['k3s', 'direct']"),
        ("/models/0/reference", "required field is missing"),
    ]


# -- revisions through the API ------------------------------------------------------------


def test_show_and_diff_revisions_over_the_api(api: Api) -> None:
    api.profile("retail", {"mode": "direct", "config": {"camera": "front"}})
    api.profile("retail", {"mode": "direct", "config": {"camera": "front"}})  # no revision
    api.profile("retail", {"mode": "direct", "config": {"camera": "back"}})
    latest = api.ok("GET", "/profiles/retail", api.admin)
    assert latest["revision"] == 2 and latest["spec"]["config"] == {"camera": "back"}
    assert latest["created_by"] == "admin" and latest["digest"].startswith("sha256:")
    first = api.ok("GET", "/profiles/retail?revision=1", api.admin)
    assert first["spec"] == {"mode": "direct", "config": {"camera": "front"}}
    diff = api.ok("GET", "/profiles/retail/diff?a=1&b=2", api.admin)["diff"]
    assert "-  camera: front\n+  camera: back\n" in diff
    assert diff.startswith("--- retail@1\n+++ retail@2\n")
    missing = api.call("GET", "/profiles/retail?revision=9", api.admin)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_revision"
    assert api.call("GET", "/profiles/nope", api.admin).status_code == 404


# -- the CLI ------------------------------------------------------------------------------


def test_cli_apply_list_show_diff(api: Api, tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    source = yaml.safe_load((ROOT / "profiles" / "small-site-direct.yaml").read_text())
    f.write_text(yaml.safe_dump(source))
    first = json.loads(cli(api, "profiles", "apply", str(f), "-o", "json").output)
    again = json.loads(cli(api, "profiles", "apply", str(f), "-o", "json").output)
    assert (first["revision"], first["created_revision"]) == (1, True)
    assert (again["revision"], again["created_revision"]) == (1, False)
    source["policies"]["interval_seconds"] = 300
    f.write_text(yaml.safe_dump(source))
    assert json.loads(cli(api, "profiles", "apply", str(f), "-o", "json").output)["revision"] == 2
    listed = json.loads(cli(api, "profiles", "list", "-o", "json").output)
    assert listed == [{"name": "small-site-direct", "revision": 2, "released_revision": None}]
    shown = cli(api, "profiles", "show", "small-site-direct", "--revision", "1")
    assert shown.exit_code == 0, shown.output
    assert "revision 1" in shown.output and "interval_seconds: 120" in shown.output
    diff = cli(api, "profiles", "diff", "small-site-direct", "1", "2")
    assert diff.exit_code == 0, diff.output
    assert "-  interval_seconds: 120\n+  interval_seconds: 300\n" in diff.output


def test_cli_refuses_an_invalid_file_before_sending(api: Api, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(f"name: retail\nmodels:\n  - name: m\n    reference: {MODEL.split('@')[0]}\n")
    out = cli(api, "profiles", "apply", str(f))
    assert out.exit_code == 1
    said = " ".join(out.output.split())  # Rich wraps long lines
    assert "/models/0/reference" in said and "is not a model reference" in said
    assert revisions(api) == {}
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    out = cli(api, "profiles", "apply", str(broken))
    assert out.exit_code == 1 and "cannot read" in out.output


# -- assignment ---------------------------------------------------------------------------


def test_assign_changes_desired_state_at_once_and_is_audited(api: Api) -> None:
    api.site()
    api.profile("plain", {"config": {"camera": "front"}})
    spec = {
        "mode": "direct",
        "models": [{"name": "detector", "reference": MODEL}],
        "config": {"camera": "back"},
        "policies": {"interval_seconds": 90},
    }
    api.profile("vision", spec)
    dev = api.device(api.token(profile="plain")["token"])
    before = api.call("GET", f"/devices/{dev.id}/desired", dev.access_token)
    assert before.json()["models"] == []
    out = cli(api, "devices", "assign", dev.id, "vision", "-o", "json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["profile"] == "vision"
    after = api.call(
        "GET",
        f"/devices/{dev.id}/desired",
        dev.access_token,
        headers={"if-none-match": before.headers["etag"]},
    )
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    body = after.json()
    assert body["profile"] == "vision" and body["revision"] == 1
    assert body["models"] == [
        {"name": "detector", "reference": MODEL, "digest": DIGEST, "origin": "https://ghcr.io"}
    ]
    assert body["config"] == {"camera": "back"} and body["interval_seconds"] == 90
    audit = api.ok("GET", "/audit", api.admin)
    assert any(
        a["action"] == "device.assign"
        and a["target"] == dev.id
        and a["detail"] == {"profile": "vision", "previous": "plain"}
        for a in audit
    )
    unknown = cli(api, "devices", "assign", dev.id, "nope")
    assert unknown.exit_code == 1 and "no profile 'nope'" in unknown.output


def test_viewer_can_read_but_not_apply_or_assign(api: Api, tmp_path: Path) -> None:
    api.site()
    api.profile("plain", {"config": {}})
    dev = api.device(api.token()["token"])
    viewer = api.user("vic", "viewer")
    f = tmp_path / "p.yaml"
    f.write_text("name: plain\nconfig:\n  x: 1\n")
    assert cli(api, "profiles", "apply", str(f), token=viewer).exit_code == 1
    assert cli(api, "devices", "assign", dev.id, "plain", token=viewer).exit_code == 1
    assert cli(api, "profiles", "show", "plain", token=viewer).exit_code == 0
    assert revisions(api) == {"plain": 1}
    assert api.ok("GET", f"/devices/{dev.id}", api.admin)["profile"] is None


# -- health checks ------------------------------------------------------------------------

HEALTH = {
    "health_deadline_seconds": 45,
    "max_attempts": 2,
    "health_checks": [
        {"type": "model_load", "timeout_seconds": 20},
        {"type": "probe"},
        {"type": "latency", "p95_ms": 50, "samples": 50},
        {"type": "http", "url": "http://127.0.0.1:8080/ready", "expect_status": 204},
    ],
}
EXEC = {"type": "exec", "command": ["/usr/bin/selftest", "--quick"], "timeout_seconds": 5}


def test_health_policy_reaches_the_desired_state(api: Api) -> None:
    api.site()
    api.profile("checked", {"mode": "direct", "policies": {"interval_seconds": 30, **HEALTH}})
    api.profile("unchecked", {"mode": "direct"})
    checked = api.device(api.token(profile="checked")["token"])
    unchecked = api.device(api.token(profile="unchecked")["token"])
    body = api.ok("GET", f"/devices/{checked.id}/desired", checked.access_token)
    assert body["interval_seconds"] == 30
    assert body["health"] == {
        "deadline_seconds": 45,
        "max_attempts": 2,
        "checks": [  # what the profile leaves out, the agent decides (None) or the default
            {"type": "model_load", "timeout_seconds": 20},
            {"type": "probe", "timeout_seconds": None},
            {"type": "latency", "p95_ms": 50, "samples": 50, "timeout_seconds": None},
            {
                "type": "http",
                "url": "http://127.0.0.1:8080/ready",
                "expect_status": 204,
                "timeout_seconds": None,
            },
        ],
    }
    assert (
        api.ok("GET", f"/devices/{unchecked.id}/desired", unchecked.access_token)["health"] is None
    )


def test_exec_checks_need_an_admin_and_are_audited(api: Api) -> None:
    spec = {"policies": {"health_checks": [*HEALTH["health_checks"], EXEC]}}
    operator = api.user("olga", "operator")
    r = api.call("POST", "/profiles", operator, json={"name": "selftest", "spec": spec})
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "exec_checks_need_admin"
    assert "/usr/bin/selftest --quick" in error["message"] and "admin" in error["message"]
    assert revisions(api) == {}
    # Without the exec check, the operator may apply the same checks.
    plain = {"policies": {"health_checks": HEALTH["health_checks"]}}
    api.ok("POST", "/profiles", operator, json={"name": "selftest", "spec": plain})

    assert api.ok("POST", "/profiles", api.admin, json={"name": "selftest", "spec": spec})[
        "created_revision"
    ]
    again = api.ok("POST", "/profiles", api.admin, json={"name": "selftest", "spec": spec})
    assert again["created_revision"] is False
    audited = [
        a for a in api.ok("GET", "/audit", api.admin) if a["action"] == "profile.exec_checks"
    ]
    assert len(audited) == 1
    assert audited[0]["target"] == "selftest" and audited[0]["actor"] == "admin"
    assert audited[0]["detail"] == {"revision": 2, "commands": [EXEC["command"]]}
    assert revisions(api) == {"selftest": 2}
