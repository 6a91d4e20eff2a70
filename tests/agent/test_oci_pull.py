"""The device's pull, against real registries and a fault proxy: by digest only,
resumable, every blob verified, one download for concurrent pulls, mirrors first."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.agent.oci.pull import PulledModel, Puller
from edgefleet.agent.oci.store import BlobStore
from edgefleet.models.pack import PushedModel, push_model
from edgefleet.oci import digest as dg
from edgefleet.oci.client import RegistryClient
from edgefleet.oci.errors import BadReference, OciError
from edgefleet.oci.transport import Endpoint
from tests.support.faultproxy import FaultProxy
from tests.support.onnxmodels import affine
from tests.support.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
PAD = 4_000_000
REPO = "models/affine"


class CountingProxy(FaultProxy):
    """A FaultProxy that adds up what every connection carried back from the registry.

    FaultProxy counts a connection's bytes only while a cut is armed, so counting arms a
    cut far beyond any blob. ``cut_once`` cuts a connection after ``n`` bytes and then
    refuses every new one: the link is gone until the test brings it back.
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.seen: set[object] = set()
        self._refuse_after_cut = False
        self.count()

    def count(self) -> None:
        self._refuse_after_cut = False
        self.cut_after(1 << 40)

    def cut_once(self, n_bytes: int) -> None:
        self.cut_after(n_bytes)
        self._refuse_after_cut = True

    def received(self) -> int:
        with self._lock:
            conns = self.seen | set(self._conns)
        return sum(c.from_upstream for c in conns)  # type: ignore[attr-defined]

    def _forget(self, conn: object) -> None:
        super()._forget(conn)  # type: ignore[arg-type]
        with self._lock:
            self.seen.add(conn)
        cut = self._cut_after
        if self._refuse_after_cut and cut is not None and conn.from_upstream >= cut:  # type: ignore[attr-defined]
            self.mode = "refuse"


@dataclass
class Setup:
    registry: Registry
    proxy: CountingProxy
    model: Path
    pushed: PushedModel
    model_digest: str

    def reference(self, host: str | None = None) -> str:
        return f"{host or f'127.0.0.1:{self.proxy.port}'}/{REPO}@{self.pushed.digest}"

    def push_to(self, other: Registry) -> None:
        with RegistryClient(Endpoint.parse(other.host, plain_http=True)) as client:
            assert push_model(client, self.model, REPO, "1.0")[0].digest == self.pushed.digest


def _stored(registry: Registry, digest: str) -> Path:
    hex_ = dg.hex_of(digest)
    return registry.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    model = affine(tmp_path / "affine.onnx", pad_bytes=PAD)
    with Registry(tmp_path / "origin") as reg, CountingProxy(reg.port) as proxy:
        with RegistryClient(Endpoint.parse(reg.host, plain_http=True)) as client:
            [pushed] = push_model(client, model, REPO, "1.0")
        yield Setup(reg, proxy, model, pushed, dg.of_file(model))


@pytest.fixture
def mirror(tmp_path: Path, setup: Setup) -> Iterator[Registry]:
    with Registry(tmp_path / "mirror") as reg:
        setup.push_to(reg)
        yield reg


def _puller(tmp_path: Path, **kw: object) -> Puller:
    return Puller(BlobStore(tmp_path / "store", fsync=False), plain_http=True, **kw)  # type: ignore[arg-type]


def _check(pulled: PulledModel, setup: Setup) -> None:
    assert dg.of_file(pulled.path) == setup.model_digest
    assert pulled.probe == setup.pushed.probe
    assert pulled.signature == setup.pushed.signature


def test_pull_by_digest_gives_the_verified_model_its_signature_and_probe(
    setup: Setup, tmp_path: Path
) -> None:
    puller = _puller(tmp_path)
    pulled = puller.pull(setup.reference())
    _check(pulled, setup)
    assert pulled.model_digest == setup.model_digest and pulled.version == "1.0"
    before = setup.proxy.received()
    assert puller.pull(setup.reference()) == pulled
    assert setup.proxy.received() == before  # in the store: nothing downloaded again


def test_a_reference_without_digest_is_refused(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(BadReference, match="pulls by digest only"):
        _puller(tmp_path).pull(f"127.0.0.1:{setup.proxy.port}/{REPO}:1.0")


def test_a_pull_cut_at_half_resumes_and_downloads_under_10_percent_again(
    setup: Setup, tmp_path: Path
) -> None:
    size = setup.model.stat().st_size
    setup.proxy.cut_once(size // 2)
    with pytest.raises(OciError, match="failed from every source"):
        _puller(tmp_path, retries=0).pull(setup.reference())
    partial = BlobStore(tmp_path / "store").partial(setup.model_digest)
    assert 0.4 * size < partial.stat().st_size < 0.6 * size

    setup.proxy.count()  # the link is back; the agent restarts
    _check(_puller(tmp_path).pull(setup.reference()), setup)
    again = setup.proxy.received() - size
    assert again < 0.10 * size, f"{again} bytes downloaded twice"
    assert not partial.exists()


def test_a_download_cut_again_and_again_resumes_within_one_pull(
    setup: Setup, tmp_path: Path
) -> None:
    size = setup.model.stat().st_size
    setup.proxy.cut_after(size // 3)  # every connection breaks after a third
    _check(_puller(tmp_path).pull(setup.reference()), setup)
    assert setup.proxy.accepted >= 3
    assert setup.proxy.received() < 1.10 * size  # each piece downloaded once


def test_a_corrupt_partial_file_is_deleted_and_fetched_again(setup: Setup, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    store.partial(setup.model_digest).write_bytes(b"\0" * (setup.model.stat().st_size // 2))
    _check(_puller(tmp_path).pull(setup.reference()), setup)


def test_a_blob_corrupt_at_the_registry_is_refused_and_never_stored(
    setup: Setup, tmp_path: Path
) -> None:
    data = _stored(setup.registry, setup.model_digest)
    data.write_bytes(b"\x01" * data.stat().st_size)
    with pytest.raises(OciError, match=r"refused twice.*hash to sha256:[0-9a-f]{64}; deleted"):
        _puller(tmp_path).pull(setup.reference())
    store = BlobStore(tmp_path / "store")
    assert not store.has(setup.model_digest)
    assert not store.partial(setup.model_digest).exists()


def test_a_healthy_mirror_is_used_before_the_origin(
    setup: Setup, mirror: Registry, tmp_path: Path
) -> None:
    pulled = _puller(tmp_path, mirrors=[mirror.url]).pull(setup.reference())
    _check(pulled, setup)
    assert setup.proxy.received() == 0


def test_a_mirror_serving_wrong_bytes_falls_through_to_the_origin(
    setup: Setup, mirror: Registry, tmp_path: Path
) -> None:
    data = _stored(mirror, setup.model_digest)
    data.write_bytes(b"\x02" * data.stat().st_size)
    _check(_puller(tmp_path, mirrors=[mirror.url]).pull(setup.reference()), setup)
    assert setup.proxy.received() >= setup.model.stat().st_size


def test_a_mirror_that_is_down_falls_through_to_the_origin(setup: Setup, tmp_path: Path) -> None:
    _check(_puller(tmp_path, mirrors=["http://127.0.0.1:9"]).pull(setup.reference()), setup)


def test_concurrent_pulls_in_threads_download_the_blob_once(setup: Setup, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store", fsync=False)
    start = threading.Barrier(4)
    results: list[PulledModel] = []

    def pull() -> None:
        start.wait()
        results.append(Puller(store, plain_http=True).pull(setup.reference()))

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and len({r.path for r in results}) == 1
    assert setup.proxy.received() < 1.5 * setup.model.stat().st_size


def test_concurrent_pulls_in_processes_download_the_blob_once(setup: Setup, tmp_path: Path) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\n"
        "from edgefleet.agent.oci.pull import Puller\n"
        "from edgefleet.agent.oci.store import BlobStore\n"
        f"p = Puller(BlobStore(Path({str(tmp_path / 'store')!r})), plain_http=True)\n"
        f"print(p.pull({setup.reference()!r}).path)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    paths = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1 and dg.of_file(Path(paths.pop())) == setup.model_digest
    assert setup.proxy.received() < 1.5 * setup.model.stat().st_size
