"""QR claims: how soon a waiting agent is enrolled once a person approves its claim, and
the agent's memory while it shows the claim.

    python bench/claim.py [--runs 10] [--workers 2] [--database-url URL]

Each run spawns ``edgefleet agent run`` with a registration file that has no token (the
"claim" image) on a fresh state directory, waits until it shows its claim and holds a
poll, then approves the claim through the API. Measured from the approval's answer to
the controller seeing the agent enrolled: the device's first status report stored
(``GET /devices/{id}`` shows it). The agent's VmRSS is read while it waits (the QR
code is drawn by a short-lived child process, ``agent/qrimage.py``, not counted here).
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
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import database, figure
from harness import median, spawn_agent, start_controller

from edgefleet.signing import cert_pin


def _claim(state: Path) -> dict[str, str] | None:
    try:
        return json.loads((state / "claim.json").read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _phase(state: Path) -> str | None:
    try:
        return json.loads((state / "state.json").read_text()).get("phase")  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait(check: object, what: str, timeout: float = 30.0) -> object:
    deadline = time.perf_counter() + timeout
    while not (value := check()):  # type: ignore[operator]
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.002)
    return value


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--database-url", default=None)
    args = p.parse_args()
    os.environ.setdefault("EDGEFLEET_CLAIM_RATE_PER_SECOND", "0")
    work = Path(tempfile.mkdtemp(prefix="ef-claim-bench-"))
    ctl = start_controller(args.database_url, workers=args.workers)
    try:
        with ctl.client() as c:
            c.post("/sites", json={"name": "bench"}).raise_for_status()
        root = x509.load_pem_x509_certificate(Path(ctl.ca).read_bytes())
        reg = work / "registration.yaml"
        reg.write_text(
            yaml.safe_dump(
                {
                    "controller_url": ctl.url,
                    "controller_id": (ctl.data_dir / "controller-id").read_text().strip(),
                    "root_pins": [cert_pin(root)],
                }
            )
        )
        to_enrolled, to_reported, rss = [], [], []
        with ctl.client() as c:
            for i in range(args.runs):
                state = work / f"claim-{i}"
                proc = spawn_agent(reg, state, f"claim-{i}")
                claim = _wait(lambda state=state: _claim(state), "the agent's claim")
                _wait(lambda state=state: _phase(state) == "awaiting_approval", "a held poll")
                time.sleep(0.5)
                rss.append(_rss_mb(proc.pid))
                r = c.post(f"/claims/{claim['id']}/approve", json={"site": "bench"})  # type: ignore[index]
                t0 = time.perf_counter()
                r.raise_for_status()
                device_id = r.json()["device_id"]
                _wait(lambda state=state: _phase(state) in ("enrolled", "ready"), "enrolment")
                to_enrolled.append(time.perf_counter() - t0)
                _wait(lambda d=device_id: c.get(f"/devices/{d}").json()["status"], "a status")
                to_reported.append(time.perf_counter() - t0)
                proc.terminate()
                proc.wait(15)
        db = "PostgreSQL" if args.database_url else "SQLite"
        print(f"{args.runs} claims, {db}, {args.workers} controller workers:")
        for name, values in (
            ("approved -> agent enrolled (its state file)", to_enrolled),
            ("approved -> first status stored by the controller", to_reported),
        ):
            print(
                f"  {name}: median {median(values) * 1000:.0f} ms, "
                f"min {min(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
            )
        print(f"  agent VmRSS while showing its claim: median {median(rss):.1f} MB")
        settings = {"database": database(args.database_url), "controller workers": args.workers}
        figure(
            f"claim approved to agent enrolled ({db})",
            median(to_enrolled) * 1000,
            "ms",
            budget=2000,
            note=f"median of {args.runs}",
            settings=settings,
        )
        figure(
            f"claim approved to first status stored ({db})",
            median(to_reported) * 1000,
            "ms",
            note=f"median of {args.runs}",
            settings=settings,
        )
        figure(
            f"agent RSS while showing its claim ({db})",
            median(rss),
            "MB",
            note=f"median of {args.runs}",
            settings=settings,
        )
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
