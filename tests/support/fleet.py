"""A small real fleet for rollout tests: a controller process over HTTPS (SQLite, or a
PostgreSQL URL, optionally two replicas behind a loopback balancer), Debian's
docker-registry in token mode trusting only the controller, tiny ONNX models pushed with
the operator's own credentials, one direct-mode profile, and N agent processes serving
its first revision, each with its own state directory and socket directory.

The fleet starts its agents all at once (they enrol, pull and start their runners in
parallel) and then waits for every one of them to serve revision 1, as the controller
sees it too. ``timings`` records how long each step took.

Helpers cover what a rollout test does: apply a revision held back (followers keep the
revision they run), create a rollout, wait for its state, read the fleet repository's
commits (which devices each one touched), read the update reports, and take devices
offline (stop the agent) and back (start it again on its state directory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from edgefleet.agent.runner.client import RunnerClient
from edgefleet.models.artifact import file_annotations
from edgefleet.models.pack import pack
from edgefleet.oci import mediatypes as mt
from edgefleet.oci.auth import PasswordAuth
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.push import Blob, push
from edgefleet.oci.transport import Endpoint
from tests.support.faultproxy import FaultProxy
from tests.support.git import git
from tests.support.onnxmodels import affine, expected
from tests.support.processes import EDGEFLEET, AgentProcess, ControllerProcess, wait_for
from tests.support.registry import Registry, TokenAuth, free_port, require_registry

SITE = "shop-1"
PROFILE = "vision"
MODEL = "detector"

DEFAULT_SETTINGS: dict[str, Any] = {
    "device_interval_seconds": 1,
    "last_seen_flush_seconds": 0.2,
    "gitops_debounce_seconds": 0.2,
    "rollout_tick_seconds": 0.5,
    "rollout_lease_seconds": 3,
}
"""Devices report every second (offline after 3 s unheard), the writer batches
enrolments for 0.2 s, the rollout engine ticks twice a second and a dead driver's lease
runs out after 3 s."""

FINAL = ("completed", "aborted", "rolled_back")
PROBE_INPUT = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
"""What the tests ask the devices' runners."""


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# -- a device: one agent process that can go offline and come back -------------------


@dataclass
class Device:
    """An agent with its own state directory and runner sockets; ``start`` again after
    ``stop`` is the same device coming back (its keys are in the state directory)."""

    serial: str
    state_dir: Path
    sockets: Path
    registration: Path
    proc: AgentProcess | None = None
    _id: str = ""

    def start(self) -> Device:
        assert self.proc is None or self.proc.proc.poll() is not None, "already running"
        self.sockets.mkdir(parents=True, exist_ok=True)
        self.proc = AgentProcess(
            self.registration,
            self.state_dir,
            self.serial,
            extra=["--socket-dir", str(self.sockets)],
        )
        return self

    def stop(self) -> None:
        """Offline: the agent (and its runners) stop as on a shutdown."""
        if self.proc is not None:
            self.proc.stop()

    def suspend(self) -> None:
        """Offline without stopping: the agent is frozen (SIGSTOP), its runners serve on."""
        assert self.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    @property
    def log(self) -> Path:
        return self.state_dir.parent / f"{self.state_dir.name}.log"

    def state(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    @property
    def id(self) -> str:
        if not self._id:
            self._id = self.state().get("device_id") or ""
        return self._id

    def applied(self) -> int | None:
        return self.state().get("applied_revision")

    def serving(self, revision: int) -> bool:
        """Runs ``revision`` by its own account, with the model's runner socket up."""
        return self.applied() == revision and (self.sockets / f"{MODEL}.sock").exists()

    def predict(self, x: list[list[float]]) -> dict[str, Any]:
        """Ask the model's runner, as an application on the device does."""
        client = RunnerClient(self.sockets / f"{MODEL}.sock", timeout=10)
        try:
            return client.predict({"x": x})
        finally:
            client.close()


# -- a balancer in front of replicas --------------------------------------------------


class Balancer(FaultProxy):
    """A TCP load balancer that sends new connections to one replica; ``switch`` moves
    it to another and cuts the open ones, as a balancer does when a health check drops
    a backend. TLS ends at the controller behind it."""

    def switch(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self._close_all(reset=True)


# -- the fleet -------------------------------------------------------------------------


@dataclass
class Commit:
    sha: str
    subject: str
    body: str
    devices: list[str]
    """Device ids whose files the commit changed (``devices/<id>/...``)."""
    paths: list[str] = field(default_factory=list)


class Fleet:
    """Start with ``start()``; ``close()`` stops everything it started."""

    def __init__(
        self,
        root: Path,
        size: int,
        *,
        database_url: str | None = None,
        replicas: int = 1,
        **settings: Any,
    ) -> None:
        self.root = root
        self.size = size
        self.database_url = database_url
        self.replicas_wanted = replicas
        self.settings = {**DEFAULT_SETTINGS, **settings}
        self.controllers: list[ControllerProcess] = []
        self.balancer: Balancer | None = None
        self.registry: Registry | None = None
        self.devices: list[Device] = []
        self.timings: dict[str, float] = {}
        self.models: dict[str, str] = {}
        """version -> manifest digest of what was pushed."""
        self.model_files: dict[str, Path] = {}
        """version -> the .onnx file pushed as that version (good models only)."""
        self._sockets_root = Path(tempfile.mkdtemp(prefix="efr-", dir="/tmp"))
        self._registration: Path | None = None
        self._client: httpx.Client | None = None

    # -- start and stop -----------------------------------------------------------

    @property
    def controller(self) -> ControllerProcess:
        """The first controller (the one the test's API client talks to)."""
        return self.controllers[0]

    @property
    def public_url(self) -> str:
        if self.balancer is not None:
            return f"https://127.0.0.1:{self.balancer.port}"
        return self.controller.url

    def start(self) -> Fleet:
        require_registry()
        began = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        registry_port = free_port()
        ctl = ControllerProcess(
            self.root / "controller",
            self.database_url,
            registry_insecure=f'["127.0.0.1:{registry_port}"]',
            **self.settings,
        )
        self.controllers.append(ctl)
        if self.replicas_wanted > 1:
            self.balancer = Balancer(ctl.port)
        ctl.settings["public_url"] = self.public_url
        ctl.start()
        for n in range(1, self.replicas_wanted):
            self.controllers.append(ctl.replica(self.root / f"controller-{n}").start())
        self.timings["controller"] = time.monotonic() - began

        step = time.monotonic()
        self.registry = self._start_registry(registry_port)
        self.push(1, "1")
        with self.client() as c:
            c.post("/sites", json={"name": SITE}).raise_for_status()
        self.apply({"version": "1"})
        self._registration = self._write_registration()
        self.timings["registry_model_profile"] = time.monotonic() - step

        step = time.monotonic()
        for i in range(self.size):
            device = Device(
                f"SN-{i:03d}",
                self.root / "agents" / f"agent-{i:03d}",
                self._sockets_root / f"{i:03d}",
                self._registration,
            )
            device.state_dir.parent.mkdir(parents=True, exist_ok=True)
            self.devices.append(device.start())
        self.wait_serving(1, timeout=60 + 3 * self.size)
        self.timings["agents"] = time.monotonic() - step
        self.timings["total"] = time.monotonic() - began
        return self

    def _start_registry(self, port: int) -> Registry:
        bundle = self.root / "registry-bundle.pem"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env["EDGEFLEET_PUBLIC_URL"] = self.public_url
        out = subprocess.run(
            [
                *EDGEFLEET,
                "controller",
                "registry-config",
                "--data-dir",
                str(self.controller.data_dir),
                "--bundle",
                str(bundle),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = yaml.safe_load(out.stdout)["auth"]["token"]
        auth = TokenAuth(token["realm"], token["service"], token["issuer"], bundle)
        return Registry(self.root / "registry", auth=auth, port=port).start()

    def _write_registration(self) -> Path:
        path = self.controller.registration(self.root / "registration.yaml", profile=PROFILE)
        if self.balancer is not None:
            doc = yaml.safe_load(path.read_text())
            doc["controller_url"] = self.public_url
            path.write_text(yaml.safe_dump(doc))
        return path

    def close(self) -> None:
        running = [d for d in self.devices if d.running]
        for device in running:  # all at once, then wait: each stops its runners
            device.resume()  # a frozen agent would not handle SIGTERM
            device.proc.proc.terminate()  # type: ignore[union-attr]
        for device in running:
            device.stop()
        if self._client is not None:
            self._client.close()
        for ctl in reversed(self.controllers):
            ctl.close()
        if self.balancer is not None:
            self.balancer.close()
        if self.registry is not None:
            self.registry.stop()
        shutil.rmtree(self._sockets_root, ignore_errors=True)

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the operator's side ------------------------------------------------------

    def client(self, controller: ControllerProcess | None = None) -> httpx.Client:
        """An operator's API client of ``controller`` (default: the first one)."""
        ctl = controller or self.controller
        return httpx.Client(
            base_url=ctl.url + "/api/v1",
            verify=ssl.create_default_context(cafile=ctl.ca),
            headers={"authorization": f"Bearer {ctl.admin_token}"},
            timeout=30,
        )

    @property
    def api(self) -> httpx.Client:
        """One long-lived client of the first controller."""
        if self._client is None:
            self._client = self.client()
        return self._client

    def reconnect(self, first: ControllerProcess | None = None) -> None:
        """Drop the API client (its controller restarted); with ``first``, talk to that
        replica from now on (the other one died)."""
        if first is not None:
            self.controllers.remove(first)
            self.controllers.insert(0, first)
        if self._client is not None:
            self._client.close()
            self._client = None

    def get(self, path: str, **params: Any) -> Any:
        r = self.api.get(path, params=params)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def _registry_client(self) -> RegistryClient:
        assert self.registry is not None
        auth = PasswordAuth(
            api_token=self.controller.admin_token,
            api_token_origin=self.public_url,
            ca_file=Path(self.controller.ca),
        )
        return RegistryClient(Endpoint.parse(self.registry.host, plain_http=True), auth)

    def console_page(self, path: str) -> str:
        """The console page at ``path`` as the bootstrap admin sees it, logged in through
        the real login form over HTTPS."""
        ctl = self.controller
        with httpx.Client(
            base_url=ctl.url, verify=ssl.create_default_context(cafile=ctl.ca), timeout=30
        ) as browser:
            form = browser.get("/console/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            login = {"username": "admin", "password": ctl.admin_password, "csrf": csrf}
            assert browser.post("/console/login", data=login).status_code == 303
            return browser.get(path).text

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The operator CLI against the fleet's public URL (the balancer, with replicas),
        which is also the registry's token realm."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env.update(
            EDGEFLEET_URL=self.public_url,
            EDGEFLEET_TOKEN=self.controller.admin_token,
            EDGEFLEET_CA_FILE=self.controller.ca,
        )
        return subprocess.run(
            [*EDGEFLEET, *args], env=env, capture_output=True, text=True, timeout=120
        )

    def push(self, seed: int, version: str) -> str:
        """``edgefleet models push`` of the affine model of ``seed`` as ``detector:VERSION``,
        with the operator's API token (the registry trusts the controller's tokens)."""
        assert self.registry is not None
        model = affine(self.root / "models" / f"detector-{seed}.onnx", seed=seed)
        out = self.cli(
            "models",
            "push",
            str(model),
            "--name",
            MODEL,
            "--version",
            version,
            "--registry",
            self.registry.host,
            "--plain-http",
            "-o",
            "json",
        )
        assert out.returncode == 0, out.stdout + out.stderr
        digest = json.loads(out.stdout)[0]["digest"]
        self.models[version] = digest
        self.model_files[version] = model
        return digest

    def push_bad(self, version: str, probe_seed: int = 90, weight_seed: int = 91) -> str:
        """A model that loads and answers, but not what its golden probe expects: the
        probe packed from one model, the weights of another (tests/agent's way). Every
        device that tries it fails the probe check and rolls back."""
        models = self.root / "models"
        packed = pack(affine(models / f"probe-{probe_seed}.onnx", seed=probe_seed), MODEL, version)
        other = affine(models / f"weights-{weight_seed}.onnx", seed=weight_seed)
        weight = Blob.of_file(mt.MODEL_WEIGHT_RAW, other, file_annotations(f"{MODEL}.onnx"))
        client = self._registry_client()
        try:
            digest = push(
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
        self.models[version] = digest
        return digest

    def spec(self, version: str, **extra: Any) -> dict[str, Any]:
        assert self.registry is not None
        return {
            "mode": "direct",
            "models": [{"name": MODEL, "reference": f"{self.registry.host}/{MODEL}:{version}"}],
            **extra,
        }

    def apply(self, spec: dict[str, Any], hold: bool = False) -> dict[str, Any]:
        """POST /profiles with the profile's next spec; ``spec`` may be a full spec or
        ``{"version": V}`` for the model ``detector:V``. Returns the answer."""
        if set(spec) == {"version"}:
            spec = self.spec(spec["version"])
        body: dict[str, Any] = {"name": PROFILE, "spec": spec}
        if hold:
            body["hold"] = True
        r = self.api.post("/profiles", json=body)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def profile(self) -> dict[str, Any]:
        return self.get(f"/profiles/{PROFILE}")

    def settled(self, timeout: float = 30) -> None:
        """The fleet repository's writer has nothing queued, on every controller."""
        for ctl in self.alive_controllers():
            with self.client(ctl) as c:
                wait_for(
                    lambda c=c: c.get("/gitops").json()["pending"] == 0,
                    timeout,
                    f"the gitops writer of {ctl.url} to settle",
                )

    def alive_controllers(self) -> list[ControllerProcess]:
        return [c for c in self.controllers if c.proc is not None and c.proc.poll() is None]

    # -- rollouts -----------------------------------------------------------------

    def create_rollout(self, **spec: Any) -> dict[str, Any]:
        body = {"profile": PROFILE, **spec}
        r = self.api.post("/rollouts", json=body)
        assert r.status_code == 201, (r.status_code, r.text)
        return r.json()

    def rollout(self, rollout_id: int, client: httpx.Client | None = None) -> dict[str, Any]:
        r = (client or self.api).get(f"/rollouts/{rollout_id}")
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def wait_rollout(
        self,
        rollout_id: int,
        states: str | tuple[str, ...],
        timeout: float,
        client: httpx.Client | None = None,
    ) -> dict[str, Any]:
        """Wait for one of ``states``; a final state that is not wanted fails at once."""
        wanted = (states,) if isinstance(states, str) else states
        last: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            nonlocal last
            last = self.rollout(rollout_id, client)
            if last["state"] in wanted:
                return last
            if last["state"] in FINAL:
                raise AssertionError(
                    f"rollout {rollout_id} ended {last['state']} ({last['reason']}), "
                    f"not {wanted}: {summary(last)}"
                )
            return None

        try:
            return wait_for(reached, timeout, f"rollout {rollout_id} to be {wanted}", every=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {summary(last)}") from None

    def wait_wave(self, rollout_id: int, number: int, states: tuple[str, ...], timeout: float):
        def reached() -> dict[str, Any] | None:
            found = self.rollout(rollout_id)
            return found if found["waves"][number - 1]["state"] in states else None

        return wait_for(reached, timeout, f"wave {number} to be {states}", every=0.2)

    def offline_count(self, **spec: Any) -> int:
        """How many selected devices the controller counts offline (the dry run)."""
        r = self.api.post("/rollouts/plan", json={"profile": PROFILE, **spec})
        assert r.status_code == 200, r.text
        return int(r.json()["offline"])

    def wait_offline(self, count: int, timeout: float = 20) -> None:
        wait_for(
            lambda: self.offline_count() == count,
            timeout,
            f"the controller to count {count} device(s) offline",
            every=0.25,
        )

    # -- what the devices did -----------------------------------------------------

    def wait_serving(
        self, revision: int, devices: list[Device] | None = None, timeout: float = 90
    ) -> None:
        """Each device runs ``revision`` by its own account and by the controller's."""
        chosen = self.devices if devices is None else devices

        def done() -> bool:
            if not all(d.serving(revision) for d in chosen):
                return False
            ids = {d.id for d in chosen}
            seen = {x["id"]: x["applied_revision"] for x in self.get("/devices", limit=10000)}
            return all(seen.get(i) == revision for i in ids)

        try:
            wait_for(done, timeout, f"{len(chosen)} device(s) to serve revision {revision}", 0.25)
        except AssertionError as exc:
            lagging = [
                (d.serial, d.applied(), d.running) for d in chosen if not d.serving(revision)
            ]
            raise AssertionError(f"{exc}; lagging (serial, applied, running): {lagging}") from None

    def check_answers(self, version: str, devices: list[Device] | None = None) -> None:
        """Each device's runner answers from model ``version``: its name for itself and
        the outputs its weights give (computed with NumPy, not onnxruntime)."""
        want = expected(self.model_files[version], np.array(PROBE_INPUT, dtype=np.float32))
        for device in self.devices if devices is None else devices:
            answer = device.predict(PROBE_INPUT)
            assert answer["model"]["version"] == version, (device.serial, answer["model"])
            got = np.array(answer["outputs"]["y"], dtype=np.float32)
            assert np.allclose(got, want, atol=1e-5), (device.serial, got, want)

    def device_rows(self) -> dict[str, dict[str, Any]]:
        return {d["id"]: d for d in self.get("/devices", limit=10000)}

    def updates(self, revision: int | None = None) -> list[dict[str, Any]]:
        """Update reports the controller holds (newest first), optionally of one revision."""
        rows = self.get("/updates", limit=1000)
        return [u for u in rows if revision is None or u["revision"] == revision]

    # -- the fleet repository -----------------------------------------------------

    @property
    def repository(self) -> Path:
        """The site's repository: ``<gitops root>/<site>.git`` (one per site)."""
        root = self.settings.get("gitops_root")
        return (Path(root) if root else self.controller.data_dir / "gitops") / f"{SITE}.git"

    def head(self) -> str:
        return git(self.repository, "rev-parse", "main").strip()

    def commits(self, since: str | None = None) -> list[Commit]:
        """Commits on main after ``since`` (exclusive), oldest first."""
        span = f"{since}..main" if since else "main"
        out = git(self.repository, "log", "--reverse", "--format=%H%x00%s%x00%b%x1e", span)
        found = []
        for entry in out.split("\x1e"):
            entry = entry.strip("\n")
            if not entry:
                continue
            sha, subject, body = entry.split("\x00", 2)
            paths = git(
                self.repository, "diff-tree", "--root", "--no-commit-id", "--name-only", "-r", sha
            ).split()
            devices = sorted({p.split("/")[1] for p in paths if p.startswith("devices/")})
            found.append(Commit(sha, subject, body.strip(), devices, paths))
        return found

    def desired_revision(self, device_id: str, rev: str = "main") -> int | None:
        """The revision the fleet repository gives ``device_id`` at commit ``rev``."""
        try:
            text = git(self.repository, "show", f"{rev}:devices/{device_id}/desired.yaml")
        except subprocess.CalledProcessError:
            return None
        data = next(d for d in yaml.safe_load_all(text) if d)["data"]
        return int(data["revision"]) if data.get("revision") not in (None, "") else None

    # -- controllers --------------------------------------------------------------

    def engine(self, controller: ControllerProcess | None = None) -> dict[str, Any]:
        with self.client(controller) as c:
            r = c.get("/rollouts/engine")
        assert r.status_code == 200, r.text
        return r.json()

    def holder_of(self, holder: str | None) -> ControllerProcess | None:
        """The controller whose process group the lease holder ``host:pid`` belongs to."""
        if not holder:
            return None
        pid = int(holder.rsplit(":", 1)[1])
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return None
        for ctl in self.controllers:
            if ctl.proc is not None and ctl.proc.pid == group:
                return ctl
        return None


def summary(rollout: dict[str, Any]) -> str:
    """One line for assertion messages: state, counts, each wave's state and gate."""
    if not rollout:
        return "(nothing)"
    waves = [
        f"{w['number']}:{w['state']}{'/' + w['gate']['detail'] if w.get('gate') else ''}"
        for w in rollout.get("waves", [])
    ]
    return (
        f"state={rollout.get('state')} reason={rollout.get('reason')!r} "
        f"wave={rollout.get('current_wave')} counts={rollout.get('counts')} waves={waves} "
        f"events={[e['action'] for e in rollout.get('events', [])]}"
    )
