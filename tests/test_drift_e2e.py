"""Drift end to end, every part real: a controller over HTTPS, docker-registry trusting
only it, a model pushed with ``--reference``, a profile with a 3-second drift window, and
two agents at two sites serving it. An application feeds one device a shifted input
stream and the other an unshifted one through the runner's socket: the shifted site
reads ``act`` in the API, ``edgefleet drift show`` and the console, the other ``ok``.
Windows closed while the controller is down arrive once it is back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.drift_windows import DriftWindows
from edgefleet.agent.results import RESULTS_FOLDER
from tests.support.fleet import MODEL, PROFILE, SITE, Device, Fleet
from tests.support.processes import wait_for

WINDOW = 3
OTHER_SITE = "shop-2"


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    with Fleet(tmp_path / "fleet", 0) as f:
        yield f  # type: ignore[misc]


def feed(device: Device, shift: float, seconds: float, seed: int) -> None:
    """An application on the device: calls of 100 rows, each row counted. Hundreds of
    rows a window at least, however slow the machine: with a hundred or so, sampling
    noise alone puts the PSI of an unshifted stream near 0.1 (about (bins - 1) / rows)."""
    rng = np.random.default_rng(seed)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        device.predict(rng.normal(shift, 1.0, size=(100, 4)).astype(np.float32).tolist())
        time.sleep(0.05)


def by_device(fleet: Fleet) -> dict[str, dict]:
    groups = fleet.get("/drift", by="device")["groups"]
    return {g["device"]: g for g in groups}


def test_a_shifted_device_raises_drift_and_an_unshifted_one_does_not(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fleet.registry is not None
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    np.savez(tmp_path / "reference.npz", x=x)
    pushed = fleet.cli(
        "models",
        "push",
        str(fleet.model_files["1"]),
        "--name",
        MODEL,
        "--version",
        "2",
        "--reference",
        str(tmp_path / "reference.npz"),
        "--registry",
        fleet.registry.host,
        "--plain-http",
        "-o",
        "json",
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    fleet.apply(fleet.spec("2", drift={"window_seconds": WINDOW, "sample_rate": 1}))
    other = fleet.controller.registration(
        tmp_path / "shop-2.yaml", profile=PROFILE, site=OTHER_SITE
    )
    assert fleet._registration is not None
    shifted = Device(
        "SN-A", tmp_path / "agent-a", Path(fleet._sockets_root / "a"), fleet._registration
    )
    steady = Device("SN-B", tmp_path / "agent-b", Path(fleet._sockets_root / "b"), other)
    fleet.devices += [shifted.start(), steady.start()]
    for d in (shifted, steady):
        wait_for(lambda d=d: d.serving(2), 90, f"{d.serial} to serve revision 2")

    feed_both = time.monotonic()
    for _ in range(3):  # interleaved, so both devices' windows fill alike
        feed(shifted, 1.5, WINDOW / 2, seed=1)
        feed(steady, 0.0, WINDOW / 2, seed=2)
    assert time.monotonic() - feed_both < 60

    def both_scored() -> dict[str, dict] | None:
        found = by_device(fleet)
        ids = (shifted.id, steady.id)
        if all(i in found and found[i]["level"] is not None for i in ids):
            return found
        return None

    found = wait_for(both_scored, 60, "both devices' drift windows to be scored")
    a, b = found[shifted.id], found[steady.id]
    assert (a["site"], b["site"]) == (SITE, OTHER_SITE)
    assert a["scored_by"] == "controller", "the reference was not read from the registry"
    assert a["level"] == "act" and a["latest"]["psi"] > 0.25, a["latest"]
    assert b["level"] == "ok" and b["latest"]["psi"] < 0.1, b["latest"]

    alerts = fleet.get("/drift")["alerts"]
    assert [(g["site"], g["level"]) for g in alerts] == [(SITE, "act")]
    monkeypatch.setenv("COLUMNS", "200")  # the CLI's table as on a wide terminal
    shown = fleet.cli("drift", "show")
    assert shown.returncode == 0, shown.stderr
    rows = {s: next(r for r in shown.stdout.splitlines() if s in r) for s in (SITE, OTHER_SITE)}
    assert "ACT" in rows[SITE] and "ACT" not in rows[OTHER_SITE] and "ok" in rows[OTHER_SITE]
    assert "1 alert" in shown.stdout
    as_json = json.loads(fleet.cli("drift", "show", "--site", OTHER_SITE, "-o", "json").stdout)
    assert [g["level"] for g in as_json["groups"]] == ["ok"]
    page = fleet.console_page("/console/drift")
    listed = page.split('id="drift-alerts"')[1].split("</table>")[0]
    assert SITE in listed and OTHER_SITE not in listed
    assert page.count('class="card drift-site"') == 2

    # -- offline: windows closed while the controller is down arrive after it is back --
    fleet.controller.stop()
    offline_from = time.time()
    feed(shifted, 1.5, 3 * WINDOW, seed=3)
    folder = shifted.state_dir / RESULTS_FOLDER
    store = DriftWindows(folder)
    try:
        waiting = wait_for(
            lambda: store.undelivered() >= 2 and store.undelivered(), 15, "windows kept offline"
        )
    finally:
        store.close()
    fleet.controller.start()
    fleet.api.close()
    fleet._client = None  # a new connection to the restarted controller

    def arrived() -> bool:
        series = by_device(fleet).get(shifted.id, {}).get("series", [])
        late = [p for p in series if p["start"] + p["seconds"] > offline_from]
        return len(late) >= waiting

    wait_for(arrived, 60, "the windows closed offline to arrive")
    store = DriftWindows(folder)
    try:
        wait_for(lambda: store.undelivered() == 0, 20, "the device to mark them delivered")
    finally:
        store.close()
    series = by_device(fleet)[shifted.id]["series"]
    assert len({p["start"] for p in series}) == len(series), "a window stored twice"
