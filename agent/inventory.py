"""What the device says about itself: read from the machine, overridable by settings.

Every probe is best-effort: a file the agent cannot read leaves its field
empty rather than stopping enrolment.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from edgefleet import __version__
from edgefleet.wire import Inventory

DMI_SERIAL = Path("/sys/class/dmi/id/product_serial")
MACHINE_ID = Path("/etc/machine-id")
OS_RELEASE = Path("/etc/os-release")
MEMINFO = Path("/proc/meminfo")

_PLACEHOLDER_SERIALS = {
    "",
    "0",
    "none",
    "default string",
    "to be filled by o.e.m.",
    "not specified",
}


def _read(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value or None


def _serial() -> str | None:
    value = _read(DMI_SERIAL)
    return None if value is None or value.lower() in _PLACEHOLDER_SERIALS else value


def _os_name() -> str:
    text = _read(OS_RELEASE) or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def _memory_mb() -> int | None:
    for line in (_read(MEMINFO) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def collect(
    serial: str | None = None,
    hardware_id: str | None = None,
    mode: str = "direct",
    node: str | None = None,
) -> Inventory:
    """This machine's inventory; ``serial``/``hardware_id`` from settings win over probes;
    ``mode`` and ``node`` (K3s mode's node name) come from settings only."""

    def short(v: str | None) -> str | None:
        return v[:256] if v else None

    return Inventory(
        serial=short(serial or _serial()),
        hardware_id=short(hardware_id or _read(MACHINE_ID)),
        hostname=short(socket.gethostname()),
        arch=short(platform.machine()),
        os=short(_os_name()),
        kernel=short(platform.release()),
        agent_version=__version__,
        cpu_count=os.cpu_count(),
        memory_mb=_memory_mb(),
        mode="k3s" if mode == "k3s" else "direct",
        node=short(node),
    )
