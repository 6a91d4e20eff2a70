"""``edgefleet dev up``: a controller on SQLite and a few real agents on this machine,
so a new user has a fleet to look at a minute after cloning (``make run``).

Everything lives under one folder (``.run`` by default) and survives restarts: the
first admin's token, printed once by the controller, is kept there (mode 0600).
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
import yaml

from edgefleet.cli import config

app = typer.Typer(help="Local development helpers.", no_args_is_help=True)

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


NO_PASSWORD = "none yet: set one with `edgefleet users passwd admin`"


def _wait_for_admin(log: Path, folder: Path, proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    """The first admin's API token and console password: printed once by the controller
    on its first start, kept in ``folder`` (mode 0600) for the starts after."""
    kept = {
        "admin-token": r"first admin API token .*: (efo\.\S+)",
        "admin-password": r"first admin console login \(shown once\): admin / (\S+)",
    }
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all((folder / name).exists() for name in kept):
            token, password = ((folder / name).read_text().strip() for name in kept)
            return token, password
        text = log.read_text(errors="replace")
        found = {name: re.search(pattern, text) for name, pattern in kept.items()}
        if (folder / "admin-token").exists() and not found["admin-password"]:
            # made by an Edgefleet older than the console: the admin has no password yet
            return (folder / "admin-token").read_text().strip(), NO_PASSWORD
        if all(found.values()):
            for name, match in found.items():
                fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(match.group(1) + "\n")  # type: ignore[union-attr]
            continue
        if proc.poll() is not None:
            raise typer.Exit(_fail(f"the controller exited; see {log}"))
        time.sleep(0.1)
    raise typer.Exit(_fail(f"the controller printed no first admin; see {log}"))


def _fail(message: str) -> int:
    typer.secho(message, fg="red", err=True)
    return 1


def _wait_ready(url: str, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise typer.Exit(_fail(f"the controller exited; see {log}"))
        try:
            if (
                httpx.get(
                    url + "/readyz", verify=ssl.create_default_context(cafile=ca), timeout=2
                ).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise typer.Exit(_fail(f"the controller did not become ready; see {log}"))


def _ensure_fleet_objects(url: str, token: str, ca: Path, agents_dir: Path) -> Path:
    """The demo site, profile and a registration file (reused across runs)."""
    reg = agents_dir / "registration.yaml"
    if reg.exists():
        return reg
    with httpx.Client(
        base_url=url + "/api/v1",
        verify=ssl.create_default_context(cafile=ca),
        headers={"authorization": f"Bearer {token}"},
    ) as c:
        c.post("/sites", json={"name": "demo-shop", "timezone": "Europe/Berlin"})
        c.post("/profiles", json={"name": "demo", "spec": {"config": {"camera": "entrance"}}})
        r = c.post(
            "/tokens",
            json={
                "site": "demo-shop",
                "profile": "demo",
                "labels": {"env": "demo"},
                "expires_in_seconds": None,
                "description": "make run",
            },
        )
        r.raise_for_status()
    agents_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(reg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(r.json()["registration"], f, sort_keys=False)
    return reg


@app.command()
def up(
    agents: int = typer.Option(3, min=0, max=50, help="How many local agents to start"),
    folder: Path = typer.Option(Path(".run"), help="Where everything is kept"),
    port: int = typer.Option(8443, envvar="EDGEFLEET_PORT"),
) -> None:
    """Run a controller and a few agents until Ctrl-C."""
    folder = folder.resolve()
    data = folder / "controller"
    data.mkdir(parents=True, exist_ok=True)
    log = folder / "controller.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(EDGEFLEET_DATA_DIR=str(data), EDGEFLEET_PORT=str(port))
    procs: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        ctl = subprocess.Popen(
            [*EDGEFLEET, "controller", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    procs.append(ctl)
    try:
        url = f"https://127.0.0.1:{port}"
        token, password = _wait_for_admin(log, folder, ctl)
        ca = data / "pki" / "root.pem"
        _wait_ready(url, ca, ctl, log)
        reg = _ensure_fleet_objects(url, token, ca, folder / "agents")
        for i in range(1, agents + 1):
            state = folder / "agents" / f"agent-{i}"
            with (folder / "agents" / f"agent-{i}.log").open("ab") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            *EDGEFLEET,
                            "agent",
                            "run",
                            "--registration",
                            str(reg),
                            "--state-dir",
                            str(state),
                            "--serial",
                            f"DEMO-{i:03d}",
                            "--hardware-id",
                            f"demo-hw-{i:03d}",
                        ],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        os.environ["EDGEFLEET_CLI_CONFIG"] = str(folder / "cli.yaml")
        cli_config = config.save(url, token, ca)
        typer.echo(
            f"\nEdgefleet is running.\n"
            f"  controller     {url}   (log: {log})\n"
            f"  console        {url}/console/   user admin, password {password}\n"
            f"  admin token    {token}\n"
            f"  root pin       {_pin(ca)}\n"
            f"  agents         {agents} (logs and state in {folder / 'agents'})\n\n"
            f"In another shell:\n"
            f"  export EDGEFLEET_CLI_CONFIG={cli_config}\n"
            f"  .venv/bin/edgefleet devices list\n\n"
            f"Ctrl-C stops everything; data stays in {folder}.\n"
        )
        while ctl.poll() is None:
            time.sleep(0.5)
        raise typer.Exit(_fail(f"the controller stopped; see {log}"))
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _pin(ca: Path) -> str:
    from cryptography import x509

    from edgefleet.signing import cert_pin

    return cert_pin(x509.load_pem_x509_certificate(ca.read_bytes()))
