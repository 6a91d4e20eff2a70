"""The model pull's budgets: a 50 MB model from the loopback registry against curl, and
how much of a pull cut at half is downloaded again when it resumes.

    python bench/pull.py [--runs 7] [--model-mb 50]

Pull is ``Puller.pull`` by digest into an empty store (manifest, probe and model, every
digest verified), with the store's fsync on (the agent's setting) and off; curl fetches
the model's blob alone (``curl -s -o FILE URL``, process start included). Medians over
``--runs``. Resume: a link that breaks at half the model and stays down fails the pull;
the link comes back and a fresh puller (the agent restarted) resumes from the partial
file; bytes counted through a loopback proxy in front of the registry.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure
from harness import median

from edgefleet.agent.oci.pull import Puller
from edgefleet.agent.oci.store import BlobStore
from edgefleet.models.pack import push_model
from edgefleet.oci import digest as dg
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import OciError
from edgefleet.oci.transport import Endpoint
from tests.support.faultproxy import FaultProxy
from tests.support.onnxmodels import affine
from tests.support.registry import Registry

REPO = "bench/model"


class CountingProxy(FaultProxy):
    """Adds up the bytes every connection carried back (FaultProxy counts them while a
    cut is armed); after ``cut_once`` the link refuses new connections."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.total, self.dead_after_cut = 0, False
        self.cut_after(1 << 40)

    def _forget(self, conn) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            known = conn in self._conns
        super()._forget(conn)
        if known:
            self.total += conn.from_upstream
            if self.dead_after_cut and conn.from_upstream >= (self._cut_after or 0):
                self.mode = "refuse"


def _pull_once(work: Path, reference: str, fsync: bool) -> float:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    puller = Puller(BlobStore(store, fsync=fsync), plain_http=True)
    t0 = time.perf_counter()
    puller.pull(reference)
    elapsed = time.perf_counter() - t0
    puller.close()
    return elapsed


def _curl_once(work: Path, url: str) -> float:
    out = work / "curl.out"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(out), url], check=True)
    return time.perf_counter() - t0


def _resume(work: Path, registry: Registry, manifest: str, size: int) -> tuple[float, float]:
    """(% of the model re-downloaded, % on disk when the link broke)."""
    store = work / "resume-store"
    with CountingProxy(registry.port) as proxy:
        reference = f"127.0.0.1:{proxy.port}/{REPO}@{manifest}"
        proxy.cut_after(size // 2)
        proxy.dead_after_cut = True
        try:
            Puller(BlobStore(store), plain_http=True, retries=0).pull(reference)
            raise SystemExit("the cut pull did not fail; the proxy did not cut")
        except OciError:
            pass
        partials = list((store / "ingest").glob("*.partial"))
        on_disk = max(p.stat().st_size for p in partials) / size * 100
        proxy.dead_after_cut = False
        proxy.cut_after(1 << 40)
        puller = Puller(BlobStore(store), plain_http=True)
        puller.pull(reference)
        puller.close()
        time.sleep(0.2)  # let the proxy's pumps see the close and count
    return (proxy.total - size) / size * 100, on_disk


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--model-mb", type=int, default=50)
    args = p.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed: apt-get install curl")
    work = Path(tempfile.mkdtemp(prefix="ef-pull-bench-"))
    try:
        model = affine(work / "model.onnx", pad_bytes=args.model_mb * 1_000_000)
        size = model.stat().st_size
        with Registry(work / "registry") as registry:
            with RegistryClient(Endpoint.parse(registry.host, plain_http=True)) as client:
                [pushed] = push_model(client, model, REPO, "1.0")
            reference = f"{registry.host}/{REPO}@{pushed.digest}"
            blob_url = f"{registry.url}/v2/{REPO}/blobs/{dg.of_file(model)}"
            _curl_once(work, blob_url)  # warm the page cache and the registry
            _pull_once(work, reference, True)
            curl = [_curl_once(work, blob_url) for _ in range(args.runs)]
            synced = [_pull_once(work, reference, True) for _ in range(args.runs)]
            unsynced = [_pull_once(work, reference, False) for _ in range(args.runs)]
            again, on_disk = _resume(work, registry, pushed.digest, size)
        mb = size / 1e6
        c, s, u = median(curl), median(synced), median(unsynced)
        print(f"model {mb:.1f} MB, {args.runs} runs, loopback docker-registry")
        print(f"{'curl (blob only):':<25}median {c * 1000:.0f} ms ({mb / c:.0f} MB/s)")
        for label, t in (("pull (fsync, default):", s), ("pull (no fsync):", u)):
            print(f"{label:<25}median {t * 1000:.0f} ms ({mb / t:.0f} MB/s), {t / c:.2f}x curl")
        print(f"resume after a cut at {on_disk:.0f}%: {again:.2f}% of the model downloaded again")
        settings = {"model": f"{mb:.0f} MB", "runs": args.runs}
        figure(
            "model pull vs curl, fsync (as shipped)",
            s / c,
            "x curl",
            budget=1.5,
            note=f"{s * 1000:.0f} ms vs {c * 1000:.0f} ms, medians of {args.runs}",
            settings=settings,
        )
        figure(
            "model pull vs curl, no fsync",
            u / c,
            "x curl",
            note=f"{u * 1000:.0f} ms, median of {args.runs}",
            settings=settings,
        )
        figure(
            "pull cut at half, downloaded again on resume",
            again,
            "% of the model",
            budget=10,
            settings=settings,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
