"""Nothing secret in any log: a full run at debug level, every part real, then a grep of
every log and every CLI output for every token, password and key it made.

The run: a controller (two workers, encrypted PKI keys, its first admin from the
environment as a Secret would give it), two agents (a registration file; a QR enrolment
code), a device of the test's own that signs in over HTTPS, an operator with an API
token and a console password, registry tokens for both, a refused credential, and
rotations of the access-token key (the old one retired, so agents fetch new tokens),
the registry key and the CA.

Shown on purpose, and so not grepped: the answers of ``tokens create`` and ``users
create`` (a secret is shown once, at creation, to the operator who made it). Everything
else is: the controller's output, the agents' logs, and every other CLI output.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import yaml
from cryptography.hazmat.primitives import serialization

from edgefleet.controller.db import make_engine
from edgefleet.controller.keyring import Keyring
from edgefleet.controller.pki import certs
from edgefleet.controller.settings import load_settings
from edgefleet.signing import make_assertion
from tests.support.apiclient import csr_for, new_key
from tests.support.processes import EDGEFLEET, AgentProcess, ControllerProcess, wait_for

ADMIN_TOKEN = "efo.0123456789ab." + "A" * 20 + "adminsecretfromthesecret"
ADMIN_PASSWORD = "first-admin-console-pass-7f3a"
PASSPHRASE = "pki-passphrase-9b1c-from-a-secret"
OPERATOR_PASSWORD = "alice-console-password-42d9"
SHOWN_ON_PURPOSE = {("tokens", "create"), ("users", "create")}
GENERIC = {
    "a JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ"),
    "a bearer secret": re.compile(r"ef[ro]\.[0-9a-f]{12}\.[A-Za-z0-9_-]{20,}"),
    "a private key": re.compile(r"PRIVATE KEY"),
}


def _pem_lines(pem: bytes) -> list[str]:
    """The base64 lines of a PEM body (full 64-character lines: long enough to mean it)."""
    return [
        line
        for line in pem.decode().splitlines()
        if len(line) == 64 and not line.startswith("-----")
    ]


def test_a_full_run_logs_no_secret(tmp_path: Path, agents: list) -> None:
    ctl = ControllerProcess(
        tmp_path / "controller",
        log_level="debug",
        device_interval_seconds=1,
        bootstrap_admin_token=ADMIN_TOKEN,
        bootstrap_admin_password=ADMIN_PASSWORD,
        key_passphrase=PASSPHRASE,
    )
    ctl.admin_token, ctl.admin_password = ADMIN_TOKEN, ADMIN_PASSWORD
    outputs: list[tuple[str, str]] = []
    secrets: dict[str, str] = {
        "admin token": ADMIN_TOKEN,
        "admin password": ADMIN_PASSWORD,
        "key passphrase": PASSPHRASE,
        "operator password": OPERATOR_PASSWORD,
    }

    def cli(*args: str, stdin: str | None = None) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env |= {"EDGEFLEET_URL": ctl.url, "EDGEFLEET_TOKEN": ADMIN_TOKEN}
        env |= {"EDGEFLEET_CA_FILE": ctl.ca, "EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE}
        out = subprocess.run(
            [*EDGEFLEET, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
        if tuple(args[:2]) not in SHOWN_ON_PURPOSE:
            outputs.append((" ".join(args[:3]), out.stdout + out.stderr))
        return out.stdout

    try:
        # The data directory set up first, as the Helm chart's migration job does.
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env |= {
            "EDGEFLEET_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
            "EDGEFLEET_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE,
            "EDGEFLEET_LOG_LEVEL": "debug",
        }
        migrate = [*EDGEFLEET, "controller", "migrate", "--data-dir", str(ctl.data_dir)]
        done = subprocess.run(migrate, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(("controller migrate", done.stdout + done.stderr))
        ctl.start()
        cli("sites", "create", "shop-1")
        registration = tmp_path / "reg.yaml"
        made = json.loads(
            cli(
                "tokens",
                "create",
                "--site",
                "shop-1",
                "--output-file",
                str(registration),
                "-o",
                "json",
            )
        )
        secrets["registration token"] = made["token"]
        label = tmp_path / "label.png"
        qr = json.loads(
            cli(
                "tokens",
                "create",
                "--site",
                "shop-1",
                "--qr",
                str(label),
                "--no-approval",
                "-o",
                "json",
            )
        )
        secrets["QR token"] = qr["token"]
        secrets["QR payload"] = qr["qr"]["payload"]
        user = json.loads(cli("users", "create", "alice", "--role", "operator", "-o", "json"))
        secrets["operator API token"] = user["api_token"]
        cli("users", "passwd", "alice", "--password-stdin", stdin=OPERATOR_PASSWORD + "\n")
        cli("tokens", "list")
        cli("users", "list")

        agents.append(
            AgentProcess(registration, tmp_path / "agent-0", "SN-0", extra=["--log-level", "debug"])
        )
        agents.append(
            AgentProcess(
                None,
                tmp_path / "agent-1",
                "SN-1",
                qr_payload=qr["qr"]["payload"],
                extra=["--log-level", "debug"],
            )
        )

        # A device of the test's own, to hold the access and registry tokens it is given.
        verify = ssl.create_default_context(cafile=ctl.ca)
        with httpx.Client(base_url=ctl.url + "/api/v1", verify=verify, timeout=30) as http:
            key = new_key()
            enrolled = http.post("/enrol", json={"token": made["token"], "csr": csr_for(key)})
            enrolled.raise_for_status()
            device = enrolled.json()["device_id"]
            controller_id = enrolled.json()["controller_id"]
            assertion = make_assertion(key, device, controller_id)
            secrets["device assertion"] = assertion
            access = http.post("/auth/token", json={"client_assertion": assertion}).json()
            secrets["device access token"] = access["access_token"]
            bearer = {"authorization": f"Bearer {access['access_token']}"}
            pull = http.get(f"/devices/{device}/registry-token", headers=bearer).json()
            secrets["device registry token"] = pull["token"]
            operator_pull = http.get(
                "/registry/token",
                params={"scope": "repository:models/x:pull"},
                auth=("alice", user["api_token"]),
            ).json()
            secrets["operator registry token"] = operator_pull["token"]
            wrong = "efo." + user["api_token"].split(".")[1] + "." + "W" * 43
            secrets["a refused API token"] = wrong
            assert (
                http.get("/devices", headers={"authorization": f"Bearer {wrong}"}).status_code
                == 401
            )
            for password in (OPERATOR_PASSWORD + "-wrong", OPERATOR_PASSWORD):
                form = http.get(ctl.url + "/console/login").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', form)
                assert csrf is not None, form[:500]
                http.post(
                    ctl.url + "/console/login",
                    data={"username": "alice", "password": password, "csrf": csrf.group(1)},
                )
            secrets["a refused password"] = OPERATOR_PASSWORD + "-wrong"
            session = [v for k, v in http.cookies.items() if "session" in k]
            assert session, dict(http.cookies)
            secrets["console session"] = session[0]

        wait_for(
            lambda: all(a.state().get("device_id") for a in agents), 60, "both agents to enrol"
        )

        keys = json.loads(cli("keys", "list", "-o", "json"))
        old_access = next(k["kid"] for k in keys if k["kind"] == "access")
        cli("keys", "rotate", "access")
        cli("keys", "retire", "access", old_access)
        cli("keys", "rotate", "registry")
        cli("keys", "bundle")
        cli("keys", "promote", "registry")
        cli("keys", "list")
        cli("pki", "rotate", "--data-dir", str(ctl.data_dir))
        cli("pki", "show", "--data-dir", str(ctl.data_dir))
        cli("controller", "registry-config", "--data-dir", str(ctl.data_dir))
        cli("devices", "list")
        time.sleep(3)  # agents meet the retired key and sign in again
        with ctl.client() as c:
            devices = c.get("/devices").json()
        assert len(devices) == 3
    finally:
        ctl.close()
        for agent in agents:
            agent.stop()

    # Every key the run made, as the files hold it and as a leak would show it.
    settings = load_settings(data_dir=ctl.data_dir, key_passphrase=PASSPHRASE)
    engine = make_engine(settings.effective_database_url)
    ring = Keyring(settings, engine)
    for kid, (raw, _) in ring.access().accepted.items():
        secrets[f"access key {kid}"] = raw.hex()
    engine.dispose()
    secrets["access key file"] = (ctl.data_dir / "access-token.key").read_text().split()[1]
    pem_lines: dict[str, list[str]] = {}
    pki_keys = [p for p in ctl.data_dir.rglob("*.key") if p.name != "access-token.key"]
    for path in [*pki_keys, *tmp_path.glob("agent-*/key*.pem")]:
        if path.suffix == ".key" and certs.is_encrypted(path):
            plain = certs.read_key(path, PASSPHRASE.encode()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            pem_lines[str(path)] = _pem_lines(plain) + _pem_lines(path.read_bytes())
        else:
            pem_lines[str(path)] = _pem_lines(path.read_bytes())
    assert len(pem_lines) >= 10 and all(pem_lines.values())  # CA now and next, agents

    logs = [("controller output", ctl.log.read_text(errors="replace"))]
    logs += [(f"agent {a.state_dir.name} log", a.log.read_text(errors="replace")) for a in agents]
    logs += outputs
    for where, text in logs[1:3]:  # the agents did what the grep is about
        assert "enrolled device_id" in text and "access token refreshed" in text, where
    leaks = []
    for where, text in logs:
        leaks += [f"{what} in {where}" for what, value in secrets.items() if value in text]
        leaks += [f"{what} in {where}" for what, rx in GENERIC.items() if rx.search(text)]
        for path, lines in pem_lines.items():
            if any(line in text for line in lines):
                leaks.append(f"the private key {path} in {where}")
    assert not leaks, "\n".join(leaks)
    assert len(secrets) >= 17 and yaml.safe_load(registration.read_text())["token"]
