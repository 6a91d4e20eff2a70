"""The images end to end on podman: the controller image, Debian's docker-registry and
three agent containers on a podman network of their own.

The agents know the controller only by its name on the network (``https://controller:8443``,
a name in the certificate the controller issued itself) and trust it through the root pin
in their registration file. The registry runs on the host, bound to the network's gateway
address, so that the operator's CLI on the host and the containers reach it at the same
``host:port`` (the one in the model references); its token realm is the controller's
address on the network, which the host reaches too (rootful podman). The test pushes a
model, sees every agent enrol, serve it and upload its predictions, then pushes a model
that fails its golden probe and sees every agent roll back to the first one.

Containers, network and registry are removed afterwards, whatever happened. Run with
``make e2e-podman`` (which builds the images first); outside CI the test skips when
podman or the images are missing, in CI it fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from edgefleet.models.artifact import file_annotations
from edgefleet.models.pack import pack
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.auth import PasswordAuth
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.push import Blob, push
from edgefleet.oci.transport import Endpoint
from tests.support.onnxmodels import affine, expected
from tests.support.processes import EDGEFLEET, wait_for
from tests.support.registry import Registry, TokenAuth, free_port, require_registry

PODMAN = ["podman", "--runtime", "runc"]
"""Debian's runc; podman's default runtime may be missing or refuse here."""
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
"""Limits the container may set under this machine's own (the host's are lower than
podman's defaults)."""
AGENT_IMAGE = os.environ.get("E2E_AGENT_IMAGE", "localhost/edgefleet-agent:latest")
CONTROLLER_IMAGE = os.environ.get("E2E_CONTROLLER_IMAGE", "localhost/edgefleet-controller:latest")
AGENT_BUDGET = 250_000_000
CONTROLLER_BUDGET = 300_000_000
AGENTS = 3
MODEL = "detector"
STATE = "/var/lib/edgefleet/agent"
X = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
SETTINGS = {
    "device_interval_seconds": 1,
    "last_seen_flush_seconds": 0.2,
    "gitops_debounce_seconds": 0.2,
    "log_level": "warning",
    "workers": 1,
}
"""Devices report every second, so the test waits seconds, not minutes."""


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def logs(container: str, tail: int = 0) -> str:
    """What the container wrote, stdout and stderr together."""
    args = [*PODMAN, "logs", *(["--tail", str(tail)] if tail else []), container]
    done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return done.stdout.decode(errors="replace")


def require(what: str, hint: str) -> None:
    """Skip with how to get ``what``, except in CI, where a missing piece is a failure."""
    message = f"{what}: {hint}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def images() -> None:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        require("podman or runc is missing", "apt-get install podman runc (make system-deps)")
    for image in (AGENT_IMAGE, CONTROLLER_IMAGE):
        if subprocess.run([*PODMAN, "image", "exists", image], check=False).returncode:
            require(f"{image} is not built", "make images")


def inspect(image: str) -> dict[str, Any]:
    return json.loads(podman("image", "inspect", image))[0]


@pytest.mark.parametrize(
    ("image", "budget"), [(AGENT_IMAGE, AGENT_BUDGET), (CONTROLLER_IMAGE, CONTROLLER_BUDGET)]
)
def test_images_are_small_and_run_as_a_user(images: None, image: str, budget: int) -> None:
    found = inspect(image)
    assert found["Size"] < budget, f"{image}: {found['Size'] / 1e6:.0f} MB"
    assert found["Config"]["User"] not in ("", "0", "root")
    # Nothing to compile with and no pip left behind.
    leftovers = podman(
        "run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "sh", image, "-c",
        "command -v gcc cc pip pip3 apt-get; ls /opt/edgefleet/bin; ls /root/.cache 2>/dev/null",
        check=False,
    )  # fmt: skip
    assert not re.search(r"gcc|/cc$|pip|apt-get|\.cache", leftovers, re.M), leftovers


def test_images_import_what_they_run_after_the_trim(images: None) -> None:
    """images/trim.sh removes files no import reaches: these imports prove it."""
    agent = (
        "import importlib.util, numpy, onnxruntime, edgefleet.agent.main, edgefleet.agent.daemon\n"
        "if importlib.util.find_spec('kubernetes'):\n"
        "    from kubernetes import client, config\n"
        "    client.V1Service(metadata=client.V1ObjectMeta(name='x'))\n"
        "print('ok')\n"
    )
    out = podman(
        "run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "python", AGENT_IMAGE,
        "-c", agent,
    )  # fmt: skip
    assert out.strip() == "ok"
    out = podman("run", "--rm", "--network", "none", *LIMITS, CONTROLLER_IMAGE, "--help")
    assert "serve" in out and "migrate" in out
    # Sites have time zones (controller/services/sites.py): the system's IANA database.
    zone = "from zoneinfo import ZoneInfo; print(ZoneInfo('Europe/Berlin').key)"
    out = podman(
        "run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "python", CONTROLLER_IMAGE,
        "-c", zone,
    )  # fmt: skip
    assert out.strip() == "Europe/Berlin"


# -- the fleet -------------------------------------------------------------------------


@dataclass
class Fleet:
    """Names and addresses of one run; ``containers`` are removed at the end."""

    tag: str
    root: Path
    network: str = ""
    gateway: str = ""
    controller_ip: str = ""
    registry_host: str = ""
    admin_token: str = ""
    containers: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The controller as the host reaches it (its address on the network)."""
        return f"https://{self.controller_ip}:8443"

    @property
    def ca(self) -> Path:
        return self.root / "controller" / "pki" / "root.pem"

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            verify=ssl.create_default_context(cafile=str(self.ca)),
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )

    def cli(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env.update(EDGEFLEET_URL=self.url, EDGEFLEET_TOKEN=self.admin_token)
        env["EDGEFLEET_CA_FILE"] = str(self.ca)
        done = subprocess.run(
            [*EDGEFLEET, *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"edgefleet {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def run(self, name: str, *args: str) -> str:
        podman("run", "-d", "--name", name, "--network", self.network, *LIMITS, *args)
        self.containers.append(name)
        return name

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{logs(name, tail=40)}" for name in self.containers)


@pytest.fixture
def fleet(images: None, tmp_path: Path) -> Iterator[Fleet]:
    require_registry()
    f = Fleet(tag=uuid.uuid4().hex[:8], root=tmp_path)
    registry: Registry | None = None
    try:
        f.network = f"ef-e2e-{f.tag}"
        podman("network", "create", f.network)
        subnet = json.loads(podman("network", "inspect", f.network))[0]["subnets"][0]
        net = ipaddress.ip_network(subnet["subnet"])
        f.gateway = subnet["gateway"]
        f.controller_ip = str(net.network_address + 10)
        # A port free on loopback is as good as free on the gateway: the registry binds
        # only the gateway's address, and the bridge has it once a container is up.
        f.registry_host = f"{f.gateway}:{free_port()}"

        data = tmp_path / "controller"
        data.mkdir(mode=0o700)
        os.chown(data, 10001, -1)  # the image's user; rootful podman maps it as it is
        env = {f"EDGEFLEET_{k.upper()}": str(v) for k, v in SETTINGS.items()}
        env.update(
            EDGEFLEET_PUBLIC_URL="https://controller:8443",
            EDGEFLEET_SERVER_NAMES=json.dumps(["controller", f.controller_ip, "localhost"]),
            EDGEFLEET_REGISTRY_INSECURE=json.dumps([f.registry_host]),
        )
        f.run(
            f"ef-e2e-controller-{f.tag}",
            "--network-alias", "controller", "--ip", f.controller_ip,
            "-v", f"{data}:/var/lib/edgefleet/controller",
            *[arg for k, v in env.items() for arg in ("-e", f"{k}={v}")],
            CONTROLLER_IMAGE,
        )  # fmt: skip
        name = f.containers[-1]
        found = wait_for(
            lambda: re.search(r"(efo\.\S+)", logs(name)),
            90,
            "the first admin token in the controller's log",
            every=0.5,
        )
        f.admin_token = found.group(1)

        def ready() -> bool:
            try:
                with f.api() as c:
                    return c.get("/sites").status_code == 200
            except (httpx.HTTPError, OSError):
                return False

        wait_for(ready, 90, f"the controller at {f.url}", every=0.5)

        # The registry trusts only the controller's token key (registry-config), and
        # sends clients for tokens to the controller's address on the network.
        bundle = tmp_path / "bundle.pem"
        config = subprocess.run(
            [
                *EDGEFLEET, "controller", "registry-config",
                "--data-dir", str(data), "--bundle", str(bundle),
            ],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
                "EDGEFLEET_PUBLIC_URL": f.url,
            },
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        token = yaml.safe_load(config.stdout)["auth"]["token"]
        auth = TokenAuth(token["realm"], token["service"], token["issuer"], bundle)
        registry = GatewayRegistry(tmp_path / "registry", f.registry_host, auth).start()
        yield f
    except BaseException:
        print(f.logs())
        raise
    finally:
        for name in f.containers:
            podman("rm", "-f", "-t", "2", name, check=False, timeout=60)
        if f.network:
            podman("network", "rm", "-f", f.network, check=False, timeout=60)
        if registry is not None:
            registry.stop()


class GatewayRegistry(Registry):
    """tests/support's registry, bound to the network's gateway instead of loopback."""

    def __init__(self, folder: Path, host: str, auth: TokenAuth) -> None:
        address, port = host.rsplit(":", 1)
        super().__init__(folder, auth=auth, port=int(port))
        self.address = address

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"


# -- helpers ---------------------------------------------------------------------------


def push_bad(f: Fleet, version: str) -> str:
    """A model that loads and answers, but not what its golden probe expects (the probe
    packed from one model, the weights of another): every device fails the probe check
    and rolls back (tests/support/fleet.py does the same)."""
    packed = pack(affine(f.root / "probe.onnx", seed=90), MODEL, version)
    other = affine(f.root / "weights.onnx", seed=91)
    weight = Blob.of_file(mt.MODEL_WEIGHT_RAW, other, file_annotations(f"{MODEL}.onnx"))
    auth = PasswordAuth(api_token=f.admin_token, api_token_origin=f.url, ca_file=f.ca)
    client = RegistryClient(Endpoint.parse(f.registry_host, plain_http=True), auth)
    try:
        return push(
            client,
            MODEL,
            version,
            packed.config,
            [weight, packed.layers[1]],
            artifact_type=mt.MODEL_ARTIFACT,
            annotations=packed.annotations,
        )
    finally:
        client.close()


def apply(f: Fleet, version: str) -> None:
    profile = f.root / "vision.yaml"
    spec = {
        "name": "vision",
        "mode": "direct",
        "models": [{"name": MODEL, "reference": f"{f.registry_host}/{MODEL}:{version}"}],
    }
    profile.write_text(yaml.safe_dump(spec))
    f.cli("profiles", "apply", str(profile))


def predict(container: str) -> list[list[float]]:
    """Ask the model's runner inside the agent's container, as an application there does."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from edgefleet.agent.runner.client import RunnerClient\n"
        f"c = RunnerClient(Path('{STATE}/run/{MODEL}.sock'), timeout=10)\n"
        f"print(json.dumps(c.predict({{'x': {X!r}}})['outputs']['y']))\n"
    )
    return json.loads(podman("exec", container, "python", "-c", script))


def devices(f: Fleet) -> list[dict[str, Any]]:
    with f.api() as c:
        return c.get("/devices").json()


# -- the test --------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_agents_in_containers_enrol_serve_upload_and_roll_back(fleet: Fleet) -> None:
    f = fleet
    v1 = affine(f.root / "v1.onnx", seed=1)
    f.cli("models", "push", str(v1), "--name", MODEL, "--version", "1.0",
          "--registry", f.registry_host, "--plain-http")  # fmt: skip
    apply(f, "1.0")
    with f.api() as c:
        c.post("/sites", json={"name": "shop-1"}).raise_for_status()
        r = c.post("/tokens", json={"site": "shop-1", "profile": "vision"})
        r.raise_for_status()
    registration = f.root / "registration.yaml"
    registration.write_text(yaml.safe_dump(r.json()["registration"]))
    registration.chmod(0o644)
    assert r.json()["registration"]["controller_url"].startswith("https://controller:8443")

    for i in range(AGENTS):
        name = f.run(
            f"ef-e2e-agent-{i}-{f.tag}",
            "-v", f"{registration}:/etc/edgefleet/registration.yaml:ro",
            AGENT_IMAGE, "--serial", f"SN-{i}", "--hardware-id", f"HW-{i}",
        )  # fmt: skip
        f.agents.append(name)

    def all_on(revision: int) -> list[dict[str, Any]]:
        found = devices(f)
        ok = len(found) == AGENTS and all(d["applied_revision"] == revision for d in found)
        return found if ok else []

    enrolled = wait_for(lambda: all_on(1), 180, "three agents to enrol and apply revision 1", 1)
    assert sorted(d["serial"] for d in enrolled) == [f"SN-{i}" for i in range(AGENTS)]

    want = expected(v1, np.array(X, dtype=np.float32))
    for name in f.agents:
        assert np.allclose(np.array(predict(name)), want, atol=1e-5)

    def uploaded() -> bool:
        with f.api() as c:
            return all(
                c.get("/results", params={"device": d["id"]}).json()["results"] for d in enrolled
            )

    wait_for(uploaded, 60, "every agent's predictions at the controller", 1)

    # A model that fails its golden probe: every agent tries it and rolls back to v1.
    push_bad(f, "2.0")
    apply(f, "2.0")

    def rolled_back() -> list[dict[str, Any]]:
        with f.api() as c:
            found = c.get("/updates", params={"outcome": "rolled_back"}).json()
        return found if len(found) == AGENTS else []

    reports = wait_for(rolled_back, 180, "three agents to report the rollback", 1)
    assert {r["revision"] for r in reports} == {2}
    assert all(d["applied_revision"] == 1 for d in devices(f))
    for name in f.agents:
        assert np.allclose(np.array(predict(name)), want, atol=1e-5)
