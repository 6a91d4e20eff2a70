"""The K3s runner gateway's costs: the agent's memory for it, and a predict's time through it.

    python bench/gateway.py [--calls 500] [--runs 3]

RSS: a process imports what the idle K3s-mode daemon imports (``edgefleet.agent.main``,
``edgefleet.agent.daemon``, ``edgefleet.agent.k3s.backend`` without the gateway) and
reads its VmRSS; then imports ``agent/k3s/gateway.py``, listens on 127.0.0.1:0, serves
one keep-alive client its calls and sits idle again; each VmRSS is read from /proc. The
median of ``--runs`` processes is printed.

Latency: the same POST /predict (tiny model, one row) ``--calls`` times after 50
unmeasured ones, over one kept-alive ``http.client`` connection, straight to the runner's
Unix socket and through the gateway (in its own process, as in the agent) on loopback
TCP; the medians and their difference are printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import median

from edgefleet.agent.runner.client import UnixHTTPConnection
from edgefleet.agent.runner.supervisor import Runner, RunnerConfig
from tests.support.onnxmodels import affine

_GATEWAY = """
import sys, time
from pathlib import Path

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

import edgefleet.agent.main, edgefleet.agent.daemon
import edgefleet.agent.k3s.api, edgefleet.agent.k3s.service, edgefleet.agent.k3s.desired
import edgefleet.agent.k3s.status
before = rss()
from edgefleet.agent.k3s.gateway import Gateway
gate = Gateway(Path(sys.argv[1]), 0, host="127.0.0.1")
gate.start()
time.sleep(0.5)
print(before, rss(), gate.address[1], flush=True)
sys.stdin.readline()  # the bench's calls
time.sleep(0.5)
print(rss(), flush=True)
sys.stdin.readline()
"""
"""Kubernetes' own modules are left out of "before" on purpose: they weigh the same
with or without the gateway, and importing them dominates the run's time."""


def _timed(conn: http.client.HTTPConnection, path: str, body: bytes, n: int) -> list[float]:
    """Milliseconds per POST, ``n`` times after 50 unmeasured warm-up calls."""
    headers = {"Content-Type": "application/json"}
    out = []
    for i in range(n + 50):
        t = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if i >= 50:
            out.append((time.perf_counter() - t) * 1000)
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {data[:200]!r}")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="efg-bench-", dir="/tmp"))
    run = work / "run"
    run.mkdir()
    tiny = affine(work / "tiny.onnx")
    body = json.dumps({"inputs": {"x": [[0.5, -1.0, 2.0, 0.25]]}}).encode()
    config = RunnerConfig(model=tiny, socket=run / "tiny.sock", results=work / "results")

    costs, idles, direct, through = [], [], [], []
    with Runner(config):
        for _ in range(args.runs):
            proc = subprocess.Popen(
                [sys.executable, "-c", _GATEWAY, str(run)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                before, listening, port = proc.stdout.readline().split()
                costs.append(float(listening) - float(before))
                sock = UnixHTTPConnection(config.socket, timeout=30)
                tcp = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
                direct += _timed(sock, "/predict", body, args.calls)
                through += _timed(tcp, "/models/tiny/predict", body, args.calls)
                sock.close()
                proc.stdin.write("\n")
                proc.stdin.flush()
                idles.append(float(proc.stdout.readline()) - float(before))
                tcp.close()
            finally:
                proc.stdin.close()
                proc.wait(10)
    print(
        f"gateway RSS in the agent: +{median(costs):.2f} MB imported and listening, "
        f"+{median(idles):.2f} MB idle after serving {args.calls + 50} calls "
        f"(median of {args.runs} processes)"
    )
    print(
        f"predict, tiny model, kept-alive connection: on the socket median "
        f"{median(direct) * 1000:.0f} us (p99 {sorted(direct)[int(len(direct) * 0.99)] * 1000:.0f}"
        f" us), through the gateway median {median(through) * 1000:.0f} us (p99 "
        f"{sorted(through)[int(len(through) * 0.99)] * 1000:.0f} us): "
        f"+{(median(through) - median(direct)) * 1000:.0f} us per call over "
        f"{len(direct)} calls each"
    )


if __name__ == "__main__":
    main()
