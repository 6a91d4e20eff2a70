"""The device daemon never carries the controller's or the operator CLI's dependencies."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = (
    "fastapi",
    "sqlmodel",
    "sqlalchemy",
    "typer",
    "rich",
    "click",
    "pygments",
    "edgefleet.controller",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "jwt",
)
"""The controller's and the operator CLI's dependencies, and httpx with its stack:
the agent speaks HTTP through ``http.client`` because httpx costs ~8 MB of the
daemon's 50 MB budget (and brings click, pygments and rich through its own CLI).
PyJWT (3.6 MB with the ``urllib.request`` its JWKS client imports) is the
controller's: the agent signs its assertions with ``cryptography``."""

NOT_IDLE = ("urllib.request", "sqlite3", "qrcode", "PIL", "edgefleet.agent.qrimage")
"""Loaded with the first model or the first results, or to show a QR claim (a device
flashed without a token), never by an idle agent."""


def _offenders(modules: list[str], forbidden: tuple[str, ...] = FORBIDDEN) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def _modules_after(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_agent_main_imports_nothing_from_controller_or_cli():
    modules = _modules_after(
        "import sys, edgefleet.agent.main, edgefleet.agent.daemon\n"
        "print(*sorted(k for k, v in sys.modules.items() if v is not None))"
    )
    assert "http.client" in modules and "cryptography" in modules  # sees real imports
    assert _offenders(modules, FORBIDDEN + NOT_IDLE + K3S_ONLY) == []


def test_edgefleet_agent_run_through_the_cli_entry_imports_no_typer_or_rich():
    """``edgefleet agent run --help`` via the console-script entry, modules listed at exit."""
    code = (
        "import atexit, os, sys\n"
        "loaded = lambda: sorted(k for k, v in sys.modules.items() if v is not None)\n"
        "atexit.register(lambda: os.write(1, ' '.join(loaded()).encode()))\n"
        "sys.argv = ['edgefleet', 'agent', 'run', '--help']\n"
        "from edgefleet.cli.entry import main\n"
        "main()\n"
    )
    modules = _modules_after(code)
    assert "edgefleet.agent.main" in modules
    assert _offenders(modules, FORBIDDEN + K3S_ONLY) == []


RUNNER_ONLY = ("onnxruntime", "numpy", "onnx")
"""The inference runner's child process loads these; the daemon and the supervisor it
uses to start and call that child never do (memory, and a runtime crash stays there)."""


def test_agent_daemon_and_runner_supervisor_import_no_onnxruntime_or_numpy():
    modules = _modules_after(
        "import sys, edgefleet.agent.main, edgefleet.agent.daemon\n"
        "import edgefleet.agent.runner.supervisor, edgefleet.agent.results\n"
        "print(*sorted(k for k, v in sys.modules.items() if v is not None))"
    )
    assert "edgefleet.agent.runner.client" in modules  # sees the supervisor's real imports
    heavy = [m for m in modules if any(m == f or m.startswith(f + ".") for f in RUNNER_ONLY)]
    assert heavy == []
    assert _offenders(modules) == []


def test_agent_model_pull_imports_only_the_standard_library_side():
    """The pull (store, download, OCI client, artifact reading) runs in the daemon."""
    modules = _modules_after(
        "import sys, edgefleet.agent.oci.pull, edgefleet.oci.resolve, edgefleet.oci.listing\n"
        "print(*sorted(k for k, v in sys.modules.items() if v is not None))"
    )
    assert "edgefleet.oci.client" in modules and "http.client" in modules
    heavy = [m for m in modules if any(m == f or m.startswith(f + ".") for f in RUNNER_ONLY)]
    assert heavy == []
    assert _offenders(modules) == []
    assert "edgefleet.models.pack" not in modules


def test_the_slot_update_engine_and_health_checks_import_no_onnxruntime_or_numpy():
    """The A/B update and its health checks run in the daemon (the probe is compared
    with the standard library, not ``Probe.compare``)."""
    modules = _modules_after(
        "import sys, edgefleet.agent.update.applier, edgefleet.agent.update.machine\n"
        "import edgefleet.agent.health.suite\n"
        "print(*sorted(k for k, v in sys.modules.items() if v is not None))"
    )
    assert "edgefleet.agent.health.checks" in modules and "edgefleet.agent.update.states" in modules
    heavy = [m for m in modules if any(m == f or m.startswith(f + ".") for f in RUNNER_ONLY)]
    assert heavy == []
    assert _offenders(modules) == []


def test_the_result_buffer_imports_only_the_standard_library_and_edgefleet():
    """The runner child and the daemon (its uploader) both open the buffer."""
    modules = _modules_after(
        "import sys\n"
        "before = set(sys.modules)\n"
        "import edgefleet.agent.buffer, edgefleet.agent.results\n"
        "print(*sorted(k for k, v in sys.modules.items() if v is not None and k not in before))"
    )
    assert "sqlite3" in modules and "edgefleet.agent.buffer" in modules
    foreign = [m for m in modules if m.split(".")[0] not in (*sys.stdlib_module_names, "edgefleet")]
    assert foreign == []


def test_agent_slots_import_only_the_standard_library_and_edgefleet():
    """Every module of ``edgefleet.agent.slots`` loads in the daemon on each start: nothing
    from outside the standard library and Edgefleet's own modules."""
    code = (
        "import importlib, pkgutil, sys\n"
        "before = set(sys.modules)\n"
        "import edgefleet.agent.slots as slots\n"
        "for info in pkgutil.iter_modules(slots.__path__):\n"
        "    importlib.import_module(f'edgefleet.agent.slots.{info.name}')\n"
        "print(*sorted(k for k, v in sys.modules.items() if v is not None and k not in before))"
    )
    modules = _modules_after(code)
    assert "edgefleet.agent.slots.bootenv" in modules and "edgefleet.agent.slots.image" in modules
    foreign = [
        m
        for m in modules
        if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "edgefleet"
    ]
    assert foreign == []


K3S_ONLY = ("kubernetes", "edgefleet.agent.k3s", "urllib3", "requests", "google", "oauthlib")
"""The ``k3s`` extra's client and what it brings: loaded by an agent in ``mode: k3s`` only."""

_AGENT_IN_MODE = (
    "import sys, tempfile\n"
    "from pathlib import Path\n"
    "from edgefleet.agent.daemon import Agent\n"
    "from edgefleet.agent.settings import load_settings\n"
    "from edgefleet.wire import Registration\n"
    "state = Path(tempfile.mkdtemp())\n"
    "env = {{'EDGEFLEET_AGENT_MODE': {mode!r}}}\n"
    "settings = load_settings({{'state_dir': str(state)}}, env=env)\n"
    "reg = Registration(controller_url='https://127.0.0.1:1', controller_id='c', root_pins=['x'])\n"
    "agent = Agent(settings, reg, k3s=None)\n"
    "assert agent.settings.mode == {mode!r}\n"
    "if agent.k3s is not None:\n"
    "    try:\n"
    "        agent.k3s.api  # the client, as the loop's first cluster call makes it\n"
    "    except Exception as exc:\n"
    "        assert 'not running in a Kubernetes pod' in str(exc), exc\n"
    "print(*sorted(k for k, v in sys.modules.items() if v is not None))"
)


def test_an_agent_in_direct_mode_never_imports_the_kubernetes_client():
    modules = _modules_after(_AGENT_IN_MODE.format(mode="direct"))
    assert "edgefleet.agent.daemon" in modules
    assert _offenders(modules, FORBIDDEN + NOT_IDLE + K3S_ONLY) == []


def test_an_agent_in_k3s_mode_imports_the_kubernetes_client():
    """The other side of the test above: the same code in ``mode: k3s`` loads it when the
    loop first asks the cluster (outside a pod that call says so, and the loop retries)."""
    modules = _modules_after(_AGENT_IN_MODE.format(mode="k3s"))
    assert "kubernetes" in modules and "edgefleet.agent.k3s.backend" in modules
    assert _offenders(modules) == []
