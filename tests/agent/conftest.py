"""Fixtures for the agent's tests: a fake controller on real HTTPS, settings, runners.

The repository root goes on sys.path so ``tests.agent.*`` and
``tests.support.*`` import the same way under any pytest import mode.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgefleet.agent.daemon import Agent  # noqa: E402
from edgefleet.agent.settings import Settings  # noqa: E402
from edgefleet.wire import Registration  # noqa: E402
from tests.agent.fakecontroller import FakeController  # noqa: E402
from tests.agent.pki import TestPKI  # noqa: E402
from tests.support.smallfs import mounted_ext4  # noqa: E402

FAST_ENV = {
    "EDGEFLEET_AGENT_BACKOFF_BASE": "0.05",
    "EDGEFLEET_AGENT_BACKOFF_CAP": "0.3",
    "EDGEFLEET_AGENT_TOKEN_BACKOFF_CAP": "0.3",
    "EDGEFLEET_AGENT_HTTP_TIMEOUT": "3",
}
"""Backoff small enough that retry tests take fractions of a second."""


def wait_until(pred: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``pred`` until true; fail the test (not hang it) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    return TestPKI("ctl")


@pytest.fixture
def fake(tmp_path: Path, pki: TestPKI) -> Iterator[FakeController]:
    """A started fake controller (HTTPS on 127.0.0.1), stopped after the test."""
    fc = FakeController(tmp_path, pki).start()
    yield fc
    fc.stop()


@pytest.fixture
def unstarted_fake(tmp_path: Path, pki: TestPKI) -> Iterator[FakeController]:
    """A fake controller whose port is bound but not listening: the controller is "down"."""
    fc = FakeController(tmp_path, pki)
    yield fc
    fc.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def write_registration(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def fast_settings(state_dir: Path, **changes: object) -> Settings:
    values: dict = {
        "state_dir": state_dir,
        "backoff_base": 0.05,
        "backoff_cap": 0.3,
        "token_backoff_cap": 0.3,
        "http_timeout": 3.0,
        "serial": "SN-TEST-1",
        "hardware_id": "hw-test-1",
    }
    values.update(changes)
    return Settings(**values)


class AgentThread:
    """A real Agent running in a thread, stopped (bounded) at the end of the test."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.result: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.agent.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> AgentThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.agent.stop.set()
        self.join(timeout)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"agent did not stop within {timeout}s"

    @property
    def state(self):
        return self.agent.store.current


@pytest.fixture
def run_agent(fake: FakeController, state_dir: Path) -> Iterator[Callable[..., AgentThread]]:
    """Start agents in threads against ``fake`` (or given registration/settings)."""
    started: list[AgentThread] = []

    def start(
        registration: dict | None = None, controller: FakeController | None = None, **settings
    ) -> AgentThread:
        reg = Registration.model_validate(registration or (controller or fake).registration())
        t = AgentThread(Agent(fast_settings(state_dir, **settings), reg)).start()
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


def agent_command(registration: Path, state_dir: Path, *extra: str) -> list[str]:
    """``edgefleet agent run ...`` through the real console-script entry point."""
    return [
        sys.executable,
        "-c",
        "import sys; from edgefleet.cli.entry import main; sys.argv[0] = 'edgefleet'; main()",
        "agent",
        "run",
        "--registration",
        str(registration),
        "--state-dir",
        str(state_dir),
        *extra,
    ]


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
    env.update(FAST_ENV)
    env.update(extra)
    return env


SMALL_FS_SIZE = 8 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB ext4 file system mounted at a temporary folder."""
    with mounted_ext4(tmp_path / "fs.img", tmp_path / "mnt", SMALL_FS_SIZE) as mountpoint:
        yield mountpoint
