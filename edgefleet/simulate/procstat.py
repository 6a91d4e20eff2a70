"""The controller's CPU seconds and RSS, read from /proc for a process and all its
descendants (``edgefleet controller serve`` is a supervisor with worker processes).

Read from /proc rather than the controller's ``/metrics``: its registry carries no
``process_*`` collector, and in multiprocess mode (several workers) prometheus-client
cannot export per-process figures at all. /proc needs the controller on this machine,
which is where the budgets are measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcSample:
    cpu_seconds: float
    rss_bytes: int
    processes: int
    each: dict[int, tuple[float, int]]
    """Per process: CPU seconds and RSS bytes (are the workers' loads even?)."""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def sample(root: int) -> ProcSample | None:
    """CPU (user + system, of live processes) and RSS summed over the tree; None when
    ``root`` is gone."""
    each: dict[int, tuple[float, int]] = {}
    for pid in tree(root):
        fields = _stat(pid)
        if fields is None:
            continue
        # after "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 ... rss=21
        each[pid] = ((int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE)
    if not each:
        return None
    cpu = sum(c for c, _ in each.values())
    return ProcSample(cpu, sum(r for _, r in each.values()), len(each), each)


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
