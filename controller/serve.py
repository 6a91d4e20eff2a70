"""``edgefleet controller serve``: prepare the data directory once, then run uvicorn
workers over HTTPS with the server certificate from the controller's own PKI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from edgefleet.controller.bootstrap import Prepared, prepare
from edgefleet.controller.settings import Settings


def hand_settings_to_workers(settings: Settings) -> Path:
    """Workers are separate processes built by a factory: give them the resolved settings
    as their one config file (JSON is YAML), with no environment left to disagree."""
    run = settings.data_dir / "run"
    run.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = run / "settings.json"
    # The first admin is made before workers start; the key passphrase never touches the
    # disk beside the keys it protects: it reaches the workers through the environment.
    data = settings.model_dump(
        mode="json", exclude={"config", "bootstrap_admin_token", "bootstrap_admin_password"}
    )
    data["data_dir"] = str(settings.data_dir.resolve())
    data.pop("key_passphrase", None)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a database URL's password
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2))
    os.chmod(path, 0o600)
    for key in [k for k in os.environ if k.startswith("EDGEFLEET_")]:
        del os.environ[key]
    os.environ["EDGEFLEET_CONFIG"] = str(path)
    if settings.key_passphrase is not None:
        os.environ["EDGEFLEET_KEY_PASSPHRASE"] = settings.key_passphrase.get_secret_value()
    if settings.workers > 1:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir()
    return path


def _metrics_dir() -> str:
    """The workers' shared metric files, outside the data directory: prometheus-client
    writes them through mmap, and a page first touched on a full disk is a SIGBUS that
    kills the worker, and every worker started after it, where a full data directory
    should only get 507s. In memory (``/dev/shm``) where the machine has it."""
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="edgefleet-metrics-", dir=where)


def announce(settings: Settings, prepared: Prepared) -> None:
    out = sys.stderr
    print(f"edgefleet controller {prepared.controller_id}", file=out)
    print(f"  url:       {settings.effective_public_url}", file=out)
    print(f"  root pin:  {prepared.root_pin}", file=out)
    print(f"  root cert: {(settings.data_dir / 'pki' / 'root.pem').resolve()}", file=out)
    if prepared.new_admin_token:
        print(
            f"  first admin API token (shown once, keep it safe): {prepared.new_admin_token}",
            file=out,
        )
    print(f"  console:   {settings.effective_public_url.rstrip('/')}/console/", file=out)
    if prepared.new_admin_password:
        print(
            f"  first admin console login (shown once): admin / {prepared.new_admin_password}",
            file=out,
        )
    out.flush()


def serve(settings: Settings) -> None:
    prepared = prepare(settings)
    announce(settings, prepared)
    pki = settings.data_dir / "pki"
    hand_settings_to_workers(settings)
    config = uvicorn.Config(
        "edgefleet.controller.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        ssl_certfile=str(pki / "server.pem"),
        ssl_keyfile=str(pki / "server.key"),
        ssl_keyfile_password=(settings.key_passphrase_bytes() or b"").decode() or None,
        log_level=settings.log_level,
        access_log=False,
        # Off: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 and ::1 and
        # rewrite the peer address before we see it. Which proxies to believe is the
        # controller's own `trusted_proxies` setting (controller/ratelimit.py).
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # A listening socket handed over by a supervisor (or a test) is used as it is, so
    # whoever started us owns the port and nothing races for it.
    sock = (
        socket.socket(fileno=settings.listen_fd)
        if settings.listen_fd is not None
        else config.bind_socket()
    )
    if settings.workers > 1:
        try:
            Multiprocess(config, sockets=[sock]).run()
        finally:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    else:
        server.run(sockets=[sock])
