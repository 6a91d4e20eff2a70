"""The agent daemon's budgets: start to enrolled on loopback, idle RSS and idle CPU.

    python bench/agent.py [--starts 10] [--idle-seconds 60] [--mode k3s]

Start to enrolled is measured from spawning ``edgefleet agent run`` (a fresh state
directory: key generation, pinning, CSR, enrolment) to its state file naming a device.
Idle figures are read from /proc for an enrolled agent at the default 10 s interval.
With ``--mode k3s`` the idle agent runs K3s mode outside a pod: it loads the
``kubernetes`` client and runs the runner gateway, but its cluster calls fail at once
(no service account), so the figure leaves out the few objects a real cluster's answers
would add.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure
from harness import median, spawn_agent, start_controller

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _device_id(state: Path) -> str | None:
    try:
        return json.loads((state / "state.json").read_text()).get("device_id")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--starts", type=int, default=10)
    p.add_argument("--idle-seconds", type=int, default=60)
    p.add_argument("--mode", choices=["direct", "k3s"], default="direct")
    args = p.parse_args()
    ctl = start_controller(workers=1)
    work = Path(tempfile.mkdtemp(prefix="ef-agent-bench-"))
    try:
        with ctl.client() as c:
            c.post("/sites", json={"name": "bench"}).raise_for_status()
            r = c.post("/tokens", json={"site": "bench"})
            r.raise_for_status()
        reg = work / "registration.yaml"
        reg.write_text(yaml.safe_dump(r.json()["registration"]))

        times = []
        for i in range(args.starts):
            state = work / f"start-{i}"
            t0 = time.perf_counter()
            proc = spawn_agent(reg, state, f"start-{i}")
            while _device_id(state) is None:
                if proc.poll() is not None or time.perf_counter() - t0 > 30:
                    raise SystemExit(f"agent {i} did not enrol")
                time.sleep(0.005)
            times.append(time.perf_counter() - t0)
            proc.terminate()
            proc.wait(10)
        print(
            f"start to enrolled: median {median(times) * 1000:.0f} ms, "
            f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {len(times)}"
        )
        settings = {"database": "SQLite", "controller workers": 1}
        figure(
            "agent start to enrolled, loopback",
            median(times) * 1000,
            "ms",
            budget=1000,
            note=f"median of {len(times)} starts",
            settings=settings,
        )

        state = work / "idle"
        mode = {"EDGEFLEET_AGENT_MODE": args.mode, "EDGEFLEET_AGENT_SERVICE_PORT": "0"}
        proc = spawn_agent(reg, state, "idle", mode)
        while _device_id(state) is None:
            time.sleep(0.05)
        time.sleep(5)
        rss = _status(proc.pid)
        ticks0, t0 = _cpu_ticks(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        ticks1, t1 = _cpu_ticks(proc.pid), time.monotonic()
        rss_end = _status(proc.pid)
        cpu = (ticks1 - ticks0) / CLK_TCK / (t1 - t0) * 100
        proc.terminate()
        proc.wait(10)
        print(
            f"idle, {args.mode} mode (10 s interval): VmRSS {rss['VmRSS'] / 1024:.1f} MB "
            f"(anon {rss['RssAnon'] / 1024:.1f} MB, file {rss['RssFile'] / 1024:.1f} MB), "
            f"after {args.idle_seconds} s {rss_end['VmRSS'] / 1024:.1f} MB; "
            f"CPU {cpu:.2f}% of a core over {args.idle_seconds} s"
        )
        settings = {**settings, "agent mode": args.mode, "interval": "10 s"}
        figure(
            f"agent idle RSS, no model ({args.mode})",
            rss["VmRSS"] / 1024,
            "MB",
            budget=50,
            note="VmRSS 5 s after enrolment",
            settings=settings,
        )
        figure(
            f"agent idle CPU, 10 s interval ({args.mode})",
            cpu,
            "% of a core",
            budget=1,
            note=f"over {args.idle_seconds} s",
            settings=settings,
        )
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
