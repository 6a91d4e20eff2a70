"""The bootloader environment of OS-image slots: which slot boots next, and how often it may try.

Both classes keep the same small interface: ``set_next(slot, attempts)`` puts a
slot on trial, ``boot_attempts`` is how many boots it has left,
``decrement_boot_attempts()`` spends one (the bootloader does this before each
try; the agent only when it counts tries itself), ``mark_good(slot)`` makes the
slot the default and stops counting, ``current()`` is the slot the bootloader
chose: the one on trial while there is one, else the default.

GRUB has no arithmetic, so the count is a digit the boot script steps down
with string comparisons. Variables: ``edgefleet_default`` (the good slot),
``edgefleet_try`` (the slot on trial, empty when none), ``edgefleet_attempts``
(0-9). The board's grub.cfg::

    load_env edgefleet_default edgefleet_try edgefleet_attempts
    set slot="${edgefleet_default}"
    if [ -n "${edgefleet_try}" ]; then
      set slot="${edgefleet_try}"
      if   [ "${edgefleet_attempts}" = 3 ]; then set edgefleet_attempts=2
      elif [ "${edgefleet_attempts}" = 2 ]; then set edgefleet_attempts=1
      elif [ "${edgefleet_attempts}" = 1 ]; then set edgefleet_attempts=0
      else set edgefleet_try=; set slot="${edgefleet_default}"; fi  # one elif per count, 9 to 1
      save_env edgefleet_try edgefleet_attempts
    fi
    # then boot the menu entry of ${slot}

U-Boot counts boots itself (CONFIG_BOOTCOUNT_LIMIT with the environment as
store): while ``upgrade_available`` is 1 it increments ``bootcount`` on each
boot and, once ``bootcount`` exceeds ``bootlimit``, runs ``altbootcmd`` instead
of ``bootcmd``. Variables: ``edgefleet_slot`` (the slot ``bootcmd`` boots),
``edgefleet_good`` (the fallback). The board's environment::

    altbootcmd=setenv edgefleet_slot ${edgefleet_good}; setenv upgrade_available 0;
               setenv bootcount 0; saveenv; run bootcmd
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Protocol

from edgefleet.agent.slots.backend import check_slot
from edgefleet.errors import ConfigError, EdgefleetError

MAX_ATTEMPTS = 9
"""GRUB's boot script counts with one digit."""


class BootEnvError(EdgefleetError):
    """The bootloader environment could not be read or written."""

    default_code = "bootenv"


class BootEnv(Protocol):
    def set_next(self, slot: str, attempts: int = 3) -> None: ...

    @property
    def boot_attempts(self) -> int: ...

    def decrement_boot_attempts(self) -> int: ...

    def mark_good(self, slot: str) -> None: ...

    def current(self) -> str: ...


def _run(tool: str, package: str, args: list[str], stdin: str | None = None) -> str:
    """Run a bootloader tool; its failure becomes an error that says which file and why."""
    exe = shutil.which(tool)
    if exe is None:
        raise ConfigError(f"{tool} not found: install Debian's {package} package")
    done = subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise BootEnvError(f"{tool} {' '.join(args)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def _parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _check_attempts(attempts: int) -> int:
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise ConfigError(f"boot attempts must be 1 to {MAX_ATTEMPTS}, not {attempts}")
    return attempts


class GrubEnv:
    """A GRUB environment block (``grubenv``) written with ``grub-editenv``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            self._editenv("create")

    def set_next(self, slot: str, attempts: int = 3) -> None:
        self._set(edgefleet_try=check_slot(slot), edgefleet_attempts=_check_attempts(attempts))

    @property
    def boot_attempts(self) -> int:
        env = self._read()
        if not env.get("edgefleet_try"):
            return 0
        return int(env.get("edgefleet_attempts", "0") or 0)

    def decrement_boot_attempts(self) -> int:
        left = max(self.boot_attempts - 1, 0)
        self._set(edgefleet_attempts=left)
        return left

    def mark_good(self, slot: str) -> None:
        self._set(edgefleet_default=check_slot(slot), edgefleet_try="", edgefleet_attempts=0)

    def current(self) -> str:
        env = self._read()
        slot = env.get("edgefleet_try") or env.get("edgefleet_default")
        if not slot:
            raise BootEnvError(f"{self.path} names no slot: mark one good first")
        return slot

    def _read(self) -> dict[str, str]:
        return _parse(self._editenv("list"))

    def _set(self, **values: object) -> None:
        self._editenv("set", *(f"{k}={v}" for k, v in values.items()))

    def _editenv(self, *args: str) -> str:
        return _run("grub-editenv", "grub-common", [str(self.path), *args])


class UBootEnv:
    """A U-Boot environment read and written with ``fw_printenv``/``fw_setenv``.

    ``config_path`` is an ``/etc/fw_env.config``-style file naming the device (or
    image file), offset and size of the environment.
    """

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    def set_next(self, slot: str, attempts: int = 3) -> None:
        self._set(
            edgefleet_slot=check_slot(slot),
            upgrade_available=1,
            bootcount=0,
            bootlimit=_check_attempts(attempts),
        )

    @property
    def boot_attempts(self) -> int:
        env = self._read()
        if env.get("upgrade_available") != "1":
            return 0
        return max(int(env.get("bootlimit", "0")) - int(env.get("bootcount", "0")), 0)

    def decrement_boot_attempts(self) -> int:
        count = int(self._read().get("bootcount", "0"))
        self._set(bootcount=count + 1)
        return self.boot_attempts

    def mark_good(self, slot: str) -> None:
        check_slot(slot)
        self._set(edgefleet_slot=slot, edgefleet_good=slot, upgrade_available=0, bootcount=0)

    def current(self) -> str:
        slot = self._read().get("edgefleet_slot")
        if not slot:
            raise BootEnvError(f"the environment in {self.config_path} names no slot")
        return slot

    def _read(self) -> dict[str, str]:
        return _parse(_run("fw_printenv", "u-boot-tools", ["-c", str(self.config_path)]))

    def _set(self, **values: object) -> None:
        """All variables in one write of the environment (libubootenv's script from stdin)."""
        script = "".join(f"{k}={v}\n" for k, v in values.items())
        _run("fw_setenv", "u-boot-tools", ["-c", str(self.config_path), "-s", "-"], stdin=script)
