"""Secrets at rest: every key file the controller and the agent write is readable by its
owner only, in folders only its owner can enter; the PKI's private keys can be encrypted
with a passphrase from the environment or a file (a mounted Kubernetes Secret), and a
controller started without it stops with a message that says what to set."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from edgefleet.agent.identity import KEY_FILE as AGENT_KEY
from edgefleet.controller.bootstrap import prepare
from edgefleet.controller.pki import certs
from edgefleet.controller.pki.authority import load_authority
from edgefleet.controller.settings import load_settings
from edgefleet.errors import ConfigError
from tests.support.processes import EDGEFLEET, AgentProcess, ControllerProcess, wait_for

PASSPHRASE = "correct horse battery staple"


def _secret_files(root: Path, secrets: list[str]) -> list[Path]:
    """Files holding a private key, a key file, or any of ``secrets`` (tokens)."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix == ".log":
            continue
        data = path.read_bytes()
        if (
            path.suffix == ".key"
            or b"PRIVATE KEY" in data
            or any(s.encode() in data for s in secrets)
        ):
            found.append(path)
    return found


def _loose(path: Path) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)


def test_key_files_are_owner_only_after_a_run(tmp_path: Path, agents: list) -> None:
    ctl = ControllerProcess(tmp_path / "controller", device_interval_seconds=1)
    try:
        ctl.start()
        registration = ctl.registration(tmp_path / "reg.yaml")
        token = yaml.safe_load(registration.read_text())["token"]
        agents.append(AgentProcess(registration, tmp_path / "agent", "SN-1"))
        wait_for(lambda: agents[0].state().get("device_id"), 60, "the agent to enrol")
        with ctl.client() as c:
            c.post("/keys/access/rotate").raise_for_status()
            c.post("/keys/registry/rotate").raise_for_status()
        assert ctl.cli("pki", "rotate", "--data-dir", str(ctl.data_dir)).returncode == 0
        secrets = [token, ctl.admin_token]
        for root in (ctl.data_dir, tmp_path / "agent"):
            found = _secret_files(root, secrets)
            assert found, f"no key files under {root}?"
            loose = [str(p) for p in found if _loose(p)]
            assert not loose, f"readable by others: {loose}"
            folders = {p.parent for p in found} | {root}
            assert not [str(d) for d in folders if _loose(d)], "folders others can enter"
        assert {"access-token.key", "root.key", "device-ca.key", "registry-token.key"} <= {
            p.name for p in _secret_files(ctl.data_dir, secrets)
        }
        assert AGENT_KEY in {p.name for p in _secret_files(tmp_path / "agent", secrets)}
    finally:
        ctl.close()


def test_pki_keys_encrypted_with_a_passphrase_file_serve_and_enrol(
    tmp_path: Path, agents: list
) -> None:
    secret_file = tmp_path / "secret" / "passphrase"  # as a Secret is mounted
    secret_file.parent.mkdir()
    secret_file.write_text(PASSPHRASE + "\n")
    ctl = ControllerProcess(tmp_path / "controller", key_passphrase_file=str(secret_file))
    try:
        ctl.start()
        pki = ctl.data_dir / "pki"
        keys = sorted(pki.rglob("*.key"))
        assert len(keys) == 5  # root, server CA, device CA, server, registry token
        assert all(certs.is_encrypted(k) for k in keys)
        registration = ctl.registration(tmp_path / "reg.yaml")
        agents.append(AgentProcess(registration, tmp_path / "agent", "SN-1"))
        wait_for(lambda: agents[0].state().get("device_id"), 60, "the agent to enrol")
        with ctl.client() as c:  # the registry key signs, from its encrypted file
            assert c.get("/registry/token").status_code == 200
    finally:
        ctl.close()
    settings = ctl.data_dir / "run" / "settings.json"
    assert PASSPHRASE not in settings.read_text()

    # Started again without the passphrase: a clear error, and nothing changed.
    before = {k: k.read_bytes() for k in keys}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    out = subprocess.run(
        [*EDGEFLEET, "controller", "migrate", "--data-dir", str(ctl.data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "encrypted" in out.stderr and "EDGEFLEET_KEY_PASSPHRASE" in out.stderr
    assert "Traceback" not in out.stderr
    wrong = subprocess.run(
        [*EDGEFLEET, "controller", "migrate", "--data-dir", str(ctl.data_dir)],
        env=env | {"EDGEFLEET_KEY_PASSPHRASE": "not it"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1 and "does not decrypt" in wrong.stderr
    assert PASSPHRASE not in out.stderr + wrong.stderr
    assert {k: k.read_bytes() for k in keys} == before


def test_keys_encrypt_turns_plain_keys_into_encrypted_ones(tmp_path: Path) -> None:
    data = tmp_path / "controller"
    prepare(load_settings(data_dir=data))
    pki = data / "pki"
    assert not any(certs.is_encrypted(k) for k in pki.rglob("*.key"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    cmd = [*EDGEFLEET, "keys", "encrypt", "--data-dir", str(data)]

    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "EDGEFLEET_KEY_PASSPHRASE" in refused.stderr
    assert not any(certs.is_encrypted(k) for k in pki.rglob("*.key"))

    env["EDGEFLEET_KEY_PASSPHRASE"] = PASSPHRASE
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "5 key(s) encrypted" in done.stdout
    for key in pki.rglob("*.key"):
        assert certs.is_encrypted(key) and not _loose(key)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert "encrypted already" in again.stdout

    auth = load_authority(pki, PASSPHRASE.encode())  # same keys, now encrypted
    assert auth.device_ca_key is not None
    with pytest.raises(ConfigError, match="EDGEFLEET_KEY_PASSPHRASE"):
        load_authority(pki)
    prepare(load_settings(data_dir=data, key_passphrase=PASSPHRASE))  # starts as before


def test_passphrase_settings_refuse_ambiguity_and_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_settings(key_passphrase_file=str(empty)).key_passphrase_bytes()
    with pytest.raises(ConfigError, match="not both"):
        load_settings(key_passphrase="a", key_passphrase_file=str(empty)).key_passphrase_bytes()
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(key_passphrase_file=str(tmp_path / "missing")).key_passphrase_bytes()
