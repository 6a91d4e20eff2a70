"""The container images' budgets: their sizes, and how long ``make images`` and
``make e2e-podman`` take together (budget 15 minutes).

    python bench/images.py [--e2e] [--cold]

``--cold`` removes the cached debootstrap base and the project's wheels first, as on a
fresh machine; without it the figures are a warm rebuild. ``--e2e`` also runs
``make e2e-podman`` (the images on a podman network) and times it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = {
    "localhost/edgefleet-agent:latest": 250,
    "localhost/edgefleet-controller:latest": 300,
}
"""Image -> budget in MB."""
BUDGET_S = 15 * 60
BASE = "localhost/edgefleet-base:bookworm"


def _make(target: str) -> float:
    started = time.monotonic()
    done = subprocess.run(["make", target], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"make {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def _size_mb(image: str) -> float:
    out = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip()) / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--e2e", action="store_true", help="also time make e2e-podman")
    p.add_argument("--cold", action="store_true", help="start without the cached base")
    args = p.parse_args()
    if shutil.which("podman") is None:
        sys.exit("needs podman: apt install podman (`make system-deps`)")
    if args.cold:
        for cached in ("build/base", "build/wheels"):
            shutil.rmtree(ROOT / cached, ignore_errors=True)
        subprocess.run(["podman", "rmi", "-f", BASE], capture_output=True, check=False)
    cold = not (ROOT / "build" / "base").exists()
    build = _make("images")
    print(f"make images ({'cold: debootstrap, wheels' if cold else 'warm'}): {build:.0f} s")
    for image, budget in IMAGES.items():
        size = _size_mb(image)
        print(f"{image}: {size:.0f} MB (budget < {budget} MB, {size / budget:.0%} of it)")
    if args.e2e:
        # make e2e-podman depends on images: this second build is a warm one
        e2e = _make("e2e-podman")
        total = build + e2e
        print(
            f"make e2e-podman: {e2e:.0f} s; with make images {total:.0f} s "
            f"(budget {BUDGET_S} s, {total / BUDGET_S:.0%} of it)"
        )


if __name__ == "__main__":
    main()
