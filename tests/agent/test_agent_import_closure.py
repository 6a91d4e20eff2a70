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
    assert _offenders(modules, FORBIDDEN + NOT_IDLE) == []


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
    assert _offenders(modules) == []


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
