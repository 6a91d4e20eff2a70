"""Rotating the controller's signing keys logs no device out and breaks no registry pull.

In process (SQLite and PostgreSQL): access-token rotation (old tokens verify until they
expire or their key is retired, new ones carry the new key id), the registry key's
stage/promote/retire and the bundle published for the registry, registration tokens made
before any rotation, and every refusal. End to end, every part real: a controller with
two workers, docker-registry in token mode, agents that pull a model and report, across
each rotation; and two replicas over PostgreSQL, one rotating, the other following with
no restart.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography import x509
from sqlalchemy import select, update
from sqlmodel import Session

from edgefleet.controller.models import SigningKey
from edgefleet.controller.pki.registry_key import libtrust_key_id
from tests.support.apiclient import Api
from tests.support.onnxmodels import affine
from tests.support.processes import EDGEFLEET, AgentProcess, ControllerProcess, wait_for
from tests.support.registry import Registry, TokenAuth, free_port, require_registry


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _keys(api: Api, kind: str) -> list[dict[str, Any]]:
    return [k for k in api.ok("GET", "/keys", api.admin) if k["kind"] == kind]


def _desired(api: Api, device_id: str, token: str) -> int:
    return api.call(
        "GET", f"/devices/{device_id}/desired", headers={"authorization": f"Bearer {token}"}
    ).status_code


def _bundle_kids(pem: str) -> set[str]:
    return {libtrust_key_id(c.public_key()) for c in x509.load_pem_x509_certificates(pem.encode())}  # type: ignore[arg-type]


def test_access_rotation_keeps_old_tokens_until_their_key_is_retired(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    old_token = dev.access_token
    (first,) = _keys(api, "access")
    assert first["signing"] and first["source"] == "file"

    rotated = api.ok("POST", "/keys/access/rotate", api.admin)
    assert rotated["state"] == "active" and rotated["kid"] != first["kid"]
    assert _desired(api, dev.id, old_token) == 200  # signed before: still good
    api.login(dev)
    assert _kid(dev.access_token) == rotated["kid"]
    assert _desired(api, dev.id, dev.access_token) == 200
    states = {k["kid"]: k for k in _keys(api, "access")}
    assert states[first["kid"]]["state"] == "previous"
    retire_after = datetime.fromisoformat(states[first["kid"]]["retire_after"])
    ttl = api.client.app.state.rt.settings.access_token_ttl_seconds  # type: ignore[attr-defined]
    assert retire_after >= datetime.now(UTC) + timedelta(seconds=ttl)  # outlives its tokens

    api.ok("POST", f"/keys/access/{first['kid']}/retire", api.admin)
    refused = api.call(
        "GET", f"/devices/{dev.id}/desired", headers={"authorization": f"Bearer {old_token}"}
    )
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
    assert "retired" in refused.json()["error"]["message"]
    assert _desired(api, dev.id, dev.access_token) == 200
    api.login(dev)  # the one refresh a device needs
    assert _desired(api, dev.id, dev.access_token) == 200


def test_a_worker_that_has_not_seen_a_rotation_yet_retires_the_old_key(api: Api) -> None:
    """Rotate on one worker, retire on another at once: the second must not refuse the
    old key as "the signing key" from a view older than the rotation."""
    from edgefleet.controller.runtime import Runtime
    from edgefleet.controller.services import key_rotation, users

    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    other = Runtime(rt.settings, rt.engine)  # a second worker, its keyring loaded now
    (first,) = _keys(api, "access")
    assert other.keyring.access().kid == first["kid"]
    api.ok("POST", "/keys/access/rotate", api.admin)
    admin = users.authenticate(rt.engine, api.admin, "127.0.0.1")
    retired = key_rotation.retire(other, admin, "access", first["kid"])
    assert retired["state"] == "retired"
    assert {k["kid"]: k["state"] for k in _keys(api, "access")}[first["kid"]] == "retired"


def test_a_previous_access_key_is_refused_once_its_tokens_have_expired(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    old_token, old_kid = dev.access_token, _kid(dev.access_token)
    api.ok("POST", "/keys/access/rotate", api.admin)
    assert _desired(api, dev.id, old_token) == 200
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    with Session(rt.engine) as s:  # the overlap is over (as if 16 minutes had passed)
        s.execute(
            update(SigningKey)
            .where(SigningKey.kid == old_kid)
            .values(retire_after=datetime.now(UTC) - timedelta(seconds=1))
        )
        s.commit()
    rt.changed()
    rt.keyring.reload()
    assert _desired(api, dev.id, old_token) == 401
    assert {k["kid"]: k["state"] for k in _keys(api, "access")}[old_kid] == "retired"


def test_registry_key_is_staged_in_the_bundle_then_promoted_then_retired(api: Api) -> None:
    bundle = api.call("GET", "/registry/bundle")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith(
        "application/x-pem-file"
    )
    (first,) = _bundle_kids(bundle.text)
    operator = api.ok("GET", "/registry/token", api.admin)["token"]
    assert _kid(operator) == first

    staged = api.ok("POST", "/keys/registry/rotate", api.admin)
    assert staged["state"] == "staged"
    assert _bundle_kids(api.call("GET", "/registry/bundle").text) == {first, staged["kid"]}
    assert _kid(api.ok("GET", "/registry/token", api.admin)["token"]) == first  # not yet
    again = api.call("POST", "/keys/registry/rotate", headers=api.auth(api.admin))
    assert again.status_code == 409 and "promote" in again.json()["error"]["message"]

    api.ok("POST", "/keys/registry/promote", api.admin)
    assert _kid(api.ok("GET", "/registry/token", api.admin)["token"]) == staged["kid"]
    assert _bundle_kids(api.call("GET", "/registry/bundle").text) == {first, staged["kid"]}
    states = {k["kid"]: (k["state"], k["signing"]) for k in _keys(api, "registry")}
    assert states == {first: ("previous", False), staged["kid"]: ("active", True)}

    api.ok("POST", f"/keys/registry/{first}/retire", api.admin)
    assert _bundle_kids(api.call("GET", "/registry/bundle").text) == {staged["kid"]}


def test_registration_tokens_outlive_every_rotation(api: Api) -> None:
    api.site()
    token = api.token()["token"]
    api.ok("POST", "/keys/access/rotate", api.admin)
    api.ok("POST", "/keys/registry/rotate", api.admin)
    api.ok("POST", "/keys/registry/promote", api.admin)
    api.ok("POST", "/keys/access/rotate", api.admin)
    dev = api.device(token)
    assert _desired(api, dev.id, dev.access_token) == 200
    r = api.call("POST", "/keys/registration/rotate", headers=api.auth(api.admin))
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_registration_key"
    assert "tokens create" in r.json()["error"]["message"]


def test_refusals_say_why_and_change_nothing(api: Api) -> None:
    before = api.ok("GET", "/keys", api.admin)
    signing = next(k["kid"] for k in before if k["kind"] == "access")
    cases = [
        ("/keys/hmac/rotate", 404, "unknown_key_kind"),
        ("/keys/registry/promote", 409, "nothing_staged"),
        ("/keys/access/promote", 400, "nothing_staged"),
        (f"/keys/access/{signing}/retire", 409, "key_in_use"),
        ("/keys/access/nosuchkid/retire", 404, "no_key"),
    ]
    for path, status, code in cases:
        r = api.call("POST", path, headers=api.auth(api.admin))
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), path
        assert r.json()["error"]["message"]
    assert api.ok("GET", "/keys", api.admin) == before


def test_rotated_key_material_is_sealed_in_the_database(api: Api) -> None:
    """A copy of the database alone signs nothing; a replica with another
    access-token.key is told which file it lacks."""
    api.ok("POST", "/keys/access/rotate", api.admin)
    api.ok("POST", "/keys/registry/rotate", api.admin)
    rt = api.client.app.state.rt  # type: ignore[attr-defined]
    with Session(rt.engine) as s:
        rows = [r for r in s.scalars(select(SigningKey)).all() if r.material is not None]
    assert len(rows) == 2
    for row in rows:
        assert "PRIVATE KEY" not in row.material
    from edgefleet.controller.keyring import Wrap
    from edgefleet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"access-token\.key"):
        Wrap(os.urandom(32)).open(rows[0].kid, rows[0].material)

    rotated = next(r.kid for r in rows if r.purpose == "access")
    api.ok("POST", "/keys/access/rotate", api.admin)
    api.ok("POST", f"/keys/access/{rotated}/retire", api.admin)
    with Session(rt.engine) as s:  # a retired key leaves nothing to steal
        row = s.scalars(select(SigningKey).where(SigningKey.kid == rotated)).one()
    assert row.state == "retired" and row.material is None


# -- end to end --------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ControllerProcess, Registry, Path]]:
    """A controller (two workers) and a registry that trusts the bundle it publishes."""
    require_registry()
    port = free_port()
    ctl = ControllerProcess(
        tmp_path / "controller",
        registry_insecure=f'["127.0.0.1:{port}"]',
        device_interval_seconds=1,
    )
    ctl.settings["public_url"] = ctl.url
    registry = None
    try:
        ctl.start()
        bundle = tmp_path / "bundle.pem"
        with ctl.client() as c:
            bundle.write_text(c.get("/registry/bundle").text)
        realm = ctl.url + "/api/v1/registry/token"
        auth = TokenAuth(realm, "edgefleet-registry", "edgefleet", bundle)
        registry = Registry(tmp_path / "registry", auth=auth, port=port).start()
        yield ctl, registry, bundle
    finally:
        if registry is not None:
            registry.stop()
        ctl.close()


def _cli(ctl: ControllerProcess, *args: str) -> str:
    out = ctl.cli(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _push(ctl: ControllerProcess, registry: Registry, model: Path, version: str) -> None:
    _cli(
        ctl,
        "models",
        "push",
        str(model),
        "--name",
        "detector",
        "--version",
        version,
        "--registry",
        registry.host,
        "--plain-http",
    )


def _apply(ctl: ControllerProcess, registry: Registry, tmp_path: Path, version: str) -> None:
    profile = tmp_path / "vision.yaml"
    reference = f"{registry.host}/detector:{version}"
    spec = {
        "name": "vision",
        "mode": "direct",
        "models": [{"name": "detector", "reference": reference}],
    }
    profile.write_text(yaml.safe_dump(spec))
    _cli(ctl, "profiles", "apply", str(profile))


def _seen_since(ctl: ControllerProcess, device_id: str, since: datetime) -> bool:
    with ctl.client() as c:
        seen = c.get(f"/devices/{device_id}").json().get("last_seen_at")
    return seen is not None and datetime.fromisoformat(seen) > since


def test_agents_pull_and_report_across_every_rotation(
    stack: tuple[ControllerProcess, Registry, Path], tmp_path: Path, agents: list
) -> None:
    ctl, registry, bundle = stack
    _push(ctl, registry, affine(tmp_path / "v1.onnx", seed=1), "1.0")
    _apply(ctl, registry, tmp_path, "1.0")
    registration = ctl.registration(tmp_path / "reg.yaml", profile="vision", max_uses=5)
    agents.append(AgentProcess(registration, tmp_path / "agent-0", "SN-0"))
    wait_for(lambda: agents[0].state().get("applied_revision") == 1, 90, "the agent on v1")
    device_id = agents[0].state()["device_id"]

    # Access key: rotate, then retire the old one at once (a suspected leak): the agent
    # fetches one new token and carries on, same device, no re-enrolment.
    old_access = next(
        k["kid"]
        for k in json.loads(_cli(ctl, "keys", "list", "-o", "json"))
        if k["kind"] == "access"
    )
    assert "is active" in _cli(ctl, "keys", "rotate", "access")
    _cli(ctl, "keys", "retire", "access", old_access)
    retired_at = datetime.now(UTC)
    wait_for(
        lambda: _seen_since(ctl, device_id, retired_at + timedelta(seconds=2)),
        30,
        "a report after the retirement",
    )

    # Registry key: stage, hand the registry the new bundle and restart it, promote; a
    # new version pushed and pulled with tokens the new key signed.
    assert "staged" in _cli(ctl, "keys", "rotate", "registry")
    bundle.write_text(_cli(ctl, "keys", "bundle"))
    assert len(x509.load_pem_x509_certificates(bundle.read_bytes())) == 2
    registry.stop()
    registry.start()
    _cli(ctl, "keys", "promote", "registry")
    _push(ctl, registry, affine(tmp_path / "v2.onnx", seed=2), "2.0")
    _apply(ctl, registry, tmp_path, "2.0")
    wait_for(lambda: agents[0].state().get("applied_revision") == 2, 90, "the agent on v2")

    # A registration file made before all this still enrols a new device, which pulls.
    agents.append(AgentProcess(registration, tmp_path / "agent-1", "SN-1"))
    wait_for(lambda: agents[1].state().get("applied_revision") == 2, 90, "a new agent on v2")
    with ctl.client() as c:
        devices = c.get("/devices").json()
    assert len(devices) == 2 and agents[0].state()["device_id"] == device_id
    log = agents[0].log.read_text()  # one refused token (the retired key), then a new one
    assert log.count("access token refused") == 1, log[-3000:]
    assert "enrolled device_id" in log and log.count("enrolled device_id") == 1


@pytest.mark.usefixtures("postgres_available")
def test_a_rotation_on_one_replica_reaches_the_other_without_restart(
    tmp_path: Path, postgres_url: str
) -> None:
    a = ControllerProcess(tmp_path / "a", database_url=postgres_url)
    b: ControllerProcess | None = None
    try:
        a.start()
        b = a.replica(tmp_path / "b").start()
        with a.client() as ca, b.client() as cb:
            ca.post("/sites", json={"name": "shop-1"}).raise_for_status()
            before = cb.get("/registry/token").json()["token"]
            rotated = ca.post("/keys/registry/rotate").json()
            ca.post("/keys/registry/promote").raise_for_status()

            def b_signs_with_new() -> bool:
                return _kid(cb.get("/registry/token").json()["token"]) == rotated["kid"]

            wait_for(b_signs_with_new, 5, "replica b to sign with the promoted key")
            assert _kid(before) != rotated["kid"]
            assert len(_bundle_kids(cb.get("/registry/bundle").text)) == 2
            access = ca.post("/keys/access/rotate").json()
            wait_for(
                lambda: any(
                    k["kid"] == access["kid"] and k["signing"] for k in cb.get("/keys").json()
                ),
                5,
                "replica b to list the new access key as signing",
            )
    finally:
        for ctl in (b, a):
            if ctl is not None:
                ctl.close()


def test_keys_cli_says_what_to_do_next(stack: tuple[ControllerProcess, Registry, Path]) -> None:
    ctl, _, _ = stack
    out = ctl.cli("keys", "rotate", "registration")
    assert out.returncode == 1 and "tokens create" in out.stderr
    assert "keys promote registry" in _cli(ctl, "keys", "rotate", "registry")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    listing = subprocess.run(
        [*EDGEFLEET, "keys", "list"],
        env=env | {"EDGEFLEET_URL": ctl.url},
        capture_output=True,
        text=True,
    )
    assert listing.returncode == 1  # no token: a clear error, not a traceback
    assert "Traceback" not in listing.stderr
