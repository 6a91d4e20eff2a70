"""``edgefleet results tail`` against the real controller in process: the newest results
in a range, as lines or JSON lines, then (``--follow``) new ones as they arrive, riding
out a controller that is briefly away; and the result lag in ``edgefleet devices list``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet.cli import results
from edgefleet.cli.app import app
from edgefleet.cli.client import Controller
from edgefleet.cli.common import Globals
from edgefleet.errors import Unauthorized
from edgefleet.readable import duration
from tests.support.apiclient import Api, TestDevice

runner = CliRunner()

EPOCH = "00000000000000a1"
BOOT = "boot-1"
MONO = 100_000.0  # the device's monotonic clock as it uploads: its boot began that long ago
DIGEST = "sha256:ab12cd34ef56" + "0" * 52


def record(seq: int, age: float, payload: Any = None, **kw: Any) -> dict[str, Any]:
    """Result ``seq`` taken ``age`` seconds ago, by the boot the batch comes from."""
    return {
        "seq": seq,
        "wall": time.time() - age,
        "mono": MONO - age,
        "boot_id": BOOT,
        "digest": DIGEST,
        "slot": "A",
        "revision": 4,
        "encoding": "json",
        "payload": json.dumps({"label": "person", "score": seq} if payload is None else payload),
        **kw,
    }


def upload(api: Api, dev: TestDevice, records: list[dict[str, Any]]) -> dict[str, Any]:
    body = {
        "epoch": EPOCH,
        "boot_id": BOOT,
        "wall": time.time(),
        "mono": MONO,
        "records": records,
        "skipped": [],
    }
    r = api.call("POST", f"/devices/{dev.id}/results", dev.access_token, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def globals_for(api: Api, token: str | None = None) -> Globals:
    g = Globals("https://testserver", token or api.admin, None)
    g.transport = api.client._transport  # the real app, in process
    return g


def cli(api: Api, *args: str) -> Any:
    return runner.invoke(app, list(args), obj=globals_for(api), catch_exceptions=False)


def fleet(api: Api) -> tuple[TestDevice, TestDevice]:
    """Two devices: five results of the first, 50 to 10 minutes old; two of the other."""
    api.site()
    tok = api.token()["token"]
    dev, other = api.device(tok), api.device(tok)
    upload(api, dev, [record(seq, age=60 * (60 - 10 * seq)) for seq in range(1, 6)])
    upload(api, other, [record(1, age=45 * 60), record(2, age=5 * 60)])
    return dev, other


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def seqs_of(output: str, device: str) -> list[int]:
    """The sequences of ``device``'s result lines, in the order printed."""
    return [
        int(line.split("#")[1].split()[0]) for line in lines_of(output) if f"{device}  #" in line
    ]


# -- tail ---------------------------------------------------------------------------


def test_tail_prints_the_newest_results_oldest_first(api: Api) -> None:
    dev, other = fleet(api)
    out = cli(api, "results", "tail")
    assert out.exit_code == 0, out.output
    assert len(lines_of(out.stdout)) == 7
    order = [(line.split()[2], int(line.split("#")[1].split()[0])) for line in lines_of(out.stdout)]
    assert order == [
        (dev.id, 1),
        (other.id, 1),
        (dev.id, 2),
        (dev.id, 3),
        (dev.id, 4),
        (dev.id, 5),
        (other.id, 2),
    ]
    first = lines_of(out.stdout)[0]
    assert "ab12cd34ef56" in first and "sha256" not in first and "A/r4" in first
    assert first.rstrip().endswith('{"label":"person","score":1}')
    assert not first.startswith("~")  # the controller corrected it by the boot's clock

    assert seqs_of(cli(api, "results", "tail", "-n", "2").stdout, dev.id) == [5]
    mine = cli(api, "results", "tail", "--device", dev.id, "--lines", "3").stdout
    assert seqs_of(mine, dev.id) == [3, 4, 5] and other.id not in mine


def test_since_and_until_take_iso_times_and_durations_ago(api: Api) -> None:
    dev, other = fleet(api)
    recent = cli(api, "results", "tail", "--since", "25m")
    assert recent.exit_code == 0, recent.output
    assert seqs_of(recent.stdout, dev.id) == [4, 5] and seqs_of(recent.stdout, other.id) == [2]
    window = cli(api, "results", "tail", "--device", dev.id, "--since", "1h", "--until", "15m")
    assert seqs_of(window.stdout, dev.id) == [1, 2, 3, 4]
    stamp = datetime.now(UTC) - timedelta(minutes=35)
    for since in (stamp.isoformat(), stamp.strftime("%Y-%m-%dT%H:%M:%S"), "0h35m"):
        out = cli(api, "results", "tail", "--device", dev.id, "--since", since)
        assert seqs_of(out.stdout, dev.id) == [3, 4, 5], since
    none = cli(api, "results", "tail", "--since", "1m")
    assert none.exit_code == 0 and none.stdout == "" and "no results" in none.stderr


def test_parse_when() -> None:
    now = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
    assert results.parse_when("10m", now) == now - timedelta(minutes=10)
    assert results.parse_when("1h30m", now) == now - timedelta(minutes=90)
    assert results.parse_when("1d", now) == now - timedelta(days=1)
    assert results.parse_when("2030-03-01T10:00:00Z") == datetime(2030, 3, 1, 10, tzinfo=UTC)
    assert results.parse_when("2030-03-01T12:00:00+02:00") == datetime(2030, 3, 1, 10, tzinfo=UTC)
    assert results.parse_when("2030-03-01 10:00") == datetime(2030, 3, 1, 10, tzinfo=UTC)


def test_json_lines_are_the_api_results(api: Api) -> None:
    dev, _ = fleet(api)
    out = cli(api, "results", "tail", "--device", dev.id, "--json")
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["payload"] == {"label": "person", "score": 1}
    assert rows[0]["digest"] == DIGEST and rows[0]["device"] == dev.id
    listed = api.ok("GET", "/results", api.admin, params={"device": dev.id})["results"]
    assert rows == listed


def test_payloads_are_cut_to_fit_and_shown_as_text(api: Api) -> None:
    api.site()
    dev = api.device(api.token()["token"])
    upload(
        api,
        dev,
        [
            record(1, 60, {"boxes": [[1, 2, 3, 4]] * 100, "note": "[bold]not markup[/bold]"}),
            {**record(2, 50), "encoding": "base64", "payload": "AAECAwQ="},
            record(3, 40, {"label": "cat"}, boot_id="boot-never-seen", slot=None, revision=None),
        ],
    )
    out = lines_of(cli(api, "results", "tail").stdout)
    assert out[0].endswith("…") and len(out[0]) < 250 and '{"boxes":[[1,2,3,4],' in out[0]
    assert "<base64, 5 bytes> AAECAwQ=" in out[1]
    assert out[2].startswith("~") and "-/-" in out[2]  # the device's own clock: uncorrected
    upload(api, dev, [record(4, 30, {"note": "[bold]not markup[/bold]"})])
    assert '"[bold]not markup[/bold]"' in cli(api, "results", "tail", "-n", "1").stdout


def test_bad_options_are_clear_errors(api: Api) -> None:
    fleet(api)
    bad = cli(api, "results", "tail", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "--since" in bad.output and "'yesterday' is neither an ISO time" in bad.output
    backwards = cli(api, "results", "tail", "--since", "10m", "--until", "1h")
    assert backwards.exit_code == 2 and "--until must be after --since" in backwards.output
    unknown = cli(api, "results", "tail", "--device", "dev-0000000000000000")
    assert unknown.exit_code == 1 and "no device dev-0000000000000000" in unknown.output
    too_many = cli(api, "results", "tail", "-n", "5000")
    assert too_many.exit_code == 2


# -- follow --------------------------------------------------------------------------


class Follower:
    """``results.follow`` in a thread, collecting what it emits until ``stop``."""

    def __init__(self, ctl: Controller, query: dict[str, Any], after: int | None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ctl, query, after), daemon=True)
        self.thread.start()

    def _run(self, ctl: Controller, query: dict[str, Any], after: int | None) -> None:
        try:
            results.follow(
                ctl,
                query,
                after=after,
                emit=self.rows.append,
                stop=self.stop,
                interval=0.05,
                warn=self.warnings.append,
            )
        except BaseException as exc:
            self.error = exc

    def seqs(self) -> list[tuple[str, int]]:
        return [(r["device"], r["seq"]) for r in self.rows]

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "follow did not stop"
        if self.error is not None:
            raise self.error


def until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_follow_prints_results_as_they_arrive(api: Api) -> None:
    dev, other = fleet(api)
    ctl = globals_for(api).controller()
    last = api.ok("GET", "/results", api.admin, params={"order": "arrival", "newest": "true"})
    follower = Follower(ctl, {"device": dev.id}, after=last["results"][-1]["id"])
    try:
        time.sleep(0.2)  # a few empty polls
        assert follower.rows == []
        # A late backlog (an hour old) shows up: following goes by arrival, not by time.
        upload(api, dev, [record(6, 3600), record(7, 1)])
        until(lambda: len(follower.rows) == 2, "the first upload")
        upload(api, other, [record(3, 1)])  # not the device followed
        upload(api, dev, [record(8, 0)])
        until(lambda: len(follower.rows) == 3, "the second upload")
    finally:
        follower.finish()
    assert follower.seqs() == [(dev.id, 6), (dev.id, 7), (dev.id, 8)]
    assert follower.warnings == []


class Flaky(httpx.BaseTransport):
    """The controller away for a while: refused connections, then 503, then the app."""

    def __init__(self, inner: httpx.BaseTransport, failures: list[str]) -> None:
        self.inner, self.failures = inner, failures

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures:
            kind = self.failures.pop(0)
            if kind == "refused":
                raise httpx.ConnectError("connection refused", request=request)
            body = {"error": {"code": "unavailable", "message": "the controller is starting"}}
            return httpx.Response(503, json=body, request=request)
        return self.inner.handle_request(request)


def test_follow_rides_out_a_controller_briefly_away(api: Api) -> None:
    dev, _ = fleet(api)
    g = globals_for(api)
    g.transport = Flaky(g.transport, ["refused", "refused", "unavailable"])
    follower = Follower(g.controller(), {"device": dev.id}, after=None)
    try:
        until(lambda: len(follower.rows) == 5, "the results once it answers")
        upload(api, dev, [record(6, 0)])
        until(lambda: len(follower.rows) == 6, "a result after the outage")
    finally:
        follower.finish()
    assert [seq for _, seq in follower.seqs()] == [1, 2, 3, 4, 5, 6]
    assert len(follower.warnings) == 4, follower.warnings
    assert "cannot reach the controller" in follower.warnings[0]
    assert follower.warnings[0].endswith("retrying in 0.05s")
    assert follower.warnings[1].endswith("retrying in 0.1s")  # waiting longer each time
    assert "the controller is starting" in follower.warnings[2]
    assert "answers again" in follower.warnings[3]


def test_follow_ends_on_an_error_waiting_cannot_fix(api: Api) -> None:
    fleet(api)
    follower = Follower(globals_for(api, token="not-a-token").controller(), {}, after=None)
    follower.thread.join(10)
    with pytest.raises(Unauthorized):
        follower.finish()


def test_cli_follow_prints_the_tail_then_new_results_until_ctrl_c(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev, _ = fleet(api)
    printed: list[int] = []
    tail_shown = threading.Event()
    real_printer = results.printer

    def printer(as_json: bool) -> results.Emit:
        emit = real_printer(as_json)

        def recorded(row: dict[str, Any]) -> None:
            emit(row)
            printed.append(row["seq"])
            if len(printed) == 2:
                tail_shown.set()
            if row["seq"] == 7:
                raise KeyboardInterrupt  # the operator presses Ctrl-C

        return recorded

    monkeypatch.setattr(results, "printer", printer)
    outcome: dict[str, Any] = {}

    def run() -> None:
        args = ["results", "tail", "--device", dev.id, "-n", "2", "-f", "--interval", "0.1"]
        try:
            outcome["result"] = cli(api, *args)
        finally:
            tail_shown.set()  # whatever happens, the test goes on to see it

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert tail_shown.wait(15), "the tail was not printed"
    assert "result" not in outcome, outcome["result"].output
    upload(api, dev, [record(6, 120), record(7, 0)])
    worker.join(15)
    assert not worker.is_alive(), "--follow did not stop on Ctrl-C"
    out = outcome["result"]
    assert out.exit_code == 0, out.output
    assert seqs_of(out.stdout, dev.id) == [4, 5, 6, 7]
    assert "following new results; Ctrl-C stops" in out.stderr


# -- lag in the device list ---------------------------------------------------------------


def test_duration_reads_like_people_write_it() -> None:
    cases = {None: "-", 0: "0s", 0.4: "0s", 45: "45s", 185: "3m", 7500: "2h5m", 7200: "2h"}
    cases |= {93784: "1d2h", 172800: "2d"}
    assert {k: duration(k) for k in cases} == cases


def test_device_list_shows_the_result_lag(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.site()
    tok = api.token()["token"]
    behind, current, silent = api.device(tok), api.device(tok), api.device(tok)
    buffer = {"depth": 40, "bytes": 4000, "oldest_age_seconds": 185, "drops": {"full": 3}}
    for dev, body in ((behind, {"buffer": buffer}), (current, {"buffer": {"depth": 0}})):
        r = api.call("POST", f"/devices/{dev.id}/status", dev.access_token, json=body)
        assert r.status_code == 200, r.text

    listed = json.loads(cli(api, "devices", "list", "-o", "json").stdout)
    by_id = {d["id"]: d for d in listed}
    assert 185 <= by_id[behind.id]["result_lag_seconds"] < 240
    assert (by_id[behind.id]["buffer_depth"], by_id[behind.id]["buffer_drops"]) == (40, {"full": 3})
    assert (by_id[current.id]["result_lag_seconds"], by_id[current.id]["buffer_depth"]) == (0, 0)
    assert by_id[silent.id]["result_lag_seconds"] is None  # it never reported its buffer
    shown = api.ok("GET", f"/devices/{behind.id}", api.admin)
    assert shown["buffer_depth"] == 40 and shown["result_lag_seconds"] >= 185

    monkeypatch.setattr(results.console, "_width", 250)  # room for every column
    table = cli(api, "devices", "list")
    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if " id " in line)
    assert header.split("┃")[-2].strip() == "lag"
    lag = {
        dev.id: next(line for line in table.stdout.splitlines() if dev.id in line)
        .split("│")[-2]
        .strip()
        for dev in (behind, current, silent)
    }
    assert lag == {behind.id: "3m", current.id: "0s", silent.id: "-"}
    detail = cli(api, "devices", "show", behind.id).stdout
    assert "full=3" in detail and "3m" in detail
