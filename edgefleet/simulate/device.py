"""One simulated device: the agent's conversation with the controller, without the agent.

Enrol with a real key and CSR; trade a signed assertion for an access token (renewed at
80% of its life, as the agent does); then on every jittered interval GET the desired
state with its ETag (304 expected), POST a status report, and, by behaviour:

- ``offline``: enrols, then never reports;
- ``flapping``: away for one to three intervals now and then, back with the same key;
- ``slow``: waits before each request and before reading each answer;
- ``uploading``: one batch of ``batch`` results per interval, gzipped, in sequence;
- ``failing_updates``: a new desired revision is tried and rolled back, reported as the
  agent reports it (an update report, then a status with the bad slot).

With an :class:`Outage` every device falls silent at its start and comes back at its end,
all at the same instant and with no jitter on the first request back (a site's power or
uplink returning), on the storm's pool (``wire.STORM``) until its first status is
answered; then it resumes its jittered interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.agent.backoff import jittered
from edgefleet.agent.identity import make_csr
from edgefleet.signing import make_assertion
from edgefleet.simulate.wire import STORM, Answer, CallFailed, Wire
from edgefleet.wire import (
    EnrolRequest,
    Inventory,
    ResultBatch,
    ResultRecord,
    SlotState,
    SlotStatus,
    StatusReport,
    TokenRequest,
    UpdateOutcome,
    UpdateReport,
    UpdateResult,
)

TOKEN_REFRESH_FRACTION = 0.8
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Outage:
    """A reconnect storm, in ``time.monotonic`` seconds: silent from ``down``, all back at
    ``back``; ``reauth``: the returning devices' access tokens are gone."""

    down: float
    back: float
    reauth: bool = False


class SimDevice:
    def __init__(
        self,
        index: int,
        kind: str,
        serial: str,
        rng: random.Random,
        batch: int = 10,
        slow_delay: float = 1.0,
    ) -> None:
        self.index = index
        self.batch = batch
        self.slow_delay = slow_delay
        self.kind = kind
        self.serial = serial
        self.rng = rng
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.device_id: str | None = None
        self.enrolled_at: float | None = None
        self.controller_id = ""
        self.interval = 0.0
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self.etag: str | None = None
        self.revision = 0
        self.applied: int | None = None
        self.slots: list[SlotStatus] = []
        self.last_update: UpdateOutcome | None = None
        self._inventory_sent = False
        self._status_cache: tuple[object, bytes] | None = None
        self.epoch = f"{rng.getrandbits(64):016x}"
        self.boot_id = f"{rng.getrandbits(128):032x}"
        self._booted = time.monotonic()
        self.seq = 0
        self.acked = 0
        self.reports = 0
        self.updates_reported = 0
        self.returning = False
        """Back from an outage, its first status not answered yet."""
        self.back_reported: float | None = None
        """When (monotonic) its first status after the outage was answered."""

    @property
    def inventory(self) -> Inventory:
        return Inventory(
            serial=self.serial,
            hardware_id=self.serial,
            hostname=self.serial,
            arch="x86_64",
            os="simulated",
            agent_version="simulate",
            cpu_count=4,
            memory_mb=4096,
        )

    def _slow(self) -> float | None:
        """A slow device's read delay for one request; None for every other device."""
        return self.rng.uniform(0.0, self.slow_delay) if self.kind == "slow" else None

    async def _pause(self) -> None:
        if self.kind == "slow":
            await asyncio.sleep(self.rng.uniform(0.0, self.slow_delay))

    # -- enrolment and tokens ----------------------------------------------------

    async def enrol(self, wire: Wire, token: str, controller_id: str) -> None:
        """POST /enrol with a fresh CSR; the answer must be an enrolled device."""
        csr = make_csr(self.key, self.serial, self.serial)
        body = EnrolRequest(token=token, csr=csr, inventory=self.inventory)
        answer = await wire.call(
            "POST /enrol", "POST", "/enrol", body=body.model_dump_json().encode(), headers=JSON
        )
        data = answer.json()
        if data.get("state") not in ("enrolled", "ready") or not data.get("certificate_chain"):
            wire.recorder.error("POST /enrol", "bad answer", f"state {data.get('state')}")
            raise CallFailed("POST /enrol")
        self.device_id = data["device_id"]
        self.controller_id = data.get("controller_id") or controller_id
        self.interval = float(data["interval_seconds"])
        self.enrolled_at = time.time()

    async def _bearer(self, wire: Wire) -> dict[str, str]:
        if self._token is None or time.monotonic() >= self._token_refresh_at:
            assert self.device_id is not None
            device_id = self.device_id

            def body() -> bytes:  # signed as it leaves: an assertion lives 60 s
                assertion = make_assertion(self.key, device_id, self.controller_id)
                return TokenRequest(client_assertion=assertion).model_dump_json().encode()

            await self._pause()
            answer = await wire.call(
                "POST /auth/token",
                "POST",
                "/auth/token",
                body=body,
                headers=JSON,
                slow=self._slow(),
            )
            data = answer.json()
            self._token = data["access_token"]
            self._token_refresh_at = time.monotonic() + TOKEN_REFRESH_FRACTION * float(
                data["expires_in"]
            )
        return {"Authorization": f"Bearer {self._token}"}

    # -- the loop -----------------------------------------------------------------

    async def run(
        self, wire: Wire, interval: float, stop_at: float, outage: Outage | None = None
    ) -> None:
        """Cycle on a jittered interval from a random start in the first interval, until
        ``stop_at`` (monotonic). A failed cycle is recorded by the wire and the device
        tries again at its next interval, as the agent does after its backoff.

        Through an ``outage`` nothing is sent; every sleep ends at its ``back`` at the
        latest, so the whole fleet returns at that instant."""
        if self.kind == "offline" or self.device_id is None:
            return
        pending = outage is not None  # the outage is still to come

        def wake(when: float) -> float:
            return min(when, outage.back) if pending and outage is not None else when

        await _sleep_until(wake(time.monotonic() + self.rng.uniform(0, interval)), stop_at)
        away_until = 0.0
        while time.monotonic() < stop_at and not wire.stopping:
            now = time.monotonic()
            back = False
            if pending and outage is not None and now >= outage.down:
                await _sleep_until(outage.back, stop_at)  # silent, connections dropped
                if time.monotonic() >= stop_at:
                    break
                pending, back, away_until, now = False, True, 0.0, time.monotonic()
                self.returning = True
                if outage.reauth:
                    self._token = None
            if (
                self.kind == "flapping"
                and not back
                and now >= away_until
                and self.rng.random() < 0.3
            ):
                away_until = now + interval * self.rng.randint(1, 3)
            if now >= away_until:
                STORM.set(self.returning)
                with contextlib.suppress(CallFailed):
                    await self.cycle(wire)
            await _sleep_until(wake(time.monotonic() + jittered(interval, self.rng, 0.1)), stop_at)

    async def cycle(self, wire: Wire) -> None:
        """Desired (304 unless changed), status, then whatever the behaviour adds."""
        await self._desired(wire)
        ack = await self._status(wire)
        if ack.get("desired_etag") not in (None, self.etag) and await self._desired(wire):
            await self._status(wire)  # as the agent: a new state, applied, is reported now
        if self.kind == "uploading":
            await self._upload(wire)

    async def _desired(self, wire: Wire) -> bool:
        """True when a new desired state came (and was applied, or failed and rolled back)."""
        assert self.device_id is not None
        headers = await self._bearer(wire)
        if self.etag:
            headers["If-None-Match"] = self.etag
        await self._pause()
        answer = await wire.call(
            "GET desired",
            "GET",
            f"/devices/{self.device_id}/desired",
            headers=headers,
            ok=(200, 304),
            slow=self._slow(),
        )
        if answer.status == 304:
            return False
        desired = answer.json()
        self.etag = answer.headers.get("ETag")
        revision = int(desired.get("revision") or 0)
        self.interval = float(desired.get("interval_seconds") or self.interval)
        if revision == self.revision:
            return False
        first = self.applied is None
        self.revision = revision
        if self.kind == "failing_updates" and not first and revision > 0:
            await self._fail_update(wire, revision)
        else:
            self.applied = revision
        return True

    async def _fail_update(self, wire: Wire, revision: int) -> None:
        """Try the revision in slot B, fail its health check, roll back to A, report."""
        started = datetime.now(UTC)
        self.last_update = UpdateOutcome(
            revision=revision,
            outcome=UpdateResult.rolled_back,
            slot="B",
            reason="simulated: the golden probe gave another output",
            started_at=started,
            finished_at=datetime.now(UTC),
        )
        self.slots = [
            SlotStatus(name="A", state=SlotState.good, revision=self.applied),
            SlotStatus(
                name="B", state=SlotState.bad, revision=revision, reason="simulated failure"
            ),
        ]
        report = UpdateReport(outcome=self.last_update)
        headers = {**await self._bearer(wire), **JSON}
        await self._pause()
        await wire.call(
            "POST updates",
            "POST",
            f"/devices/{self.device_id}/updates",
            body=report.model_dump_json().encode(),
            headers=headers,
            ok=(200, 201),
            slow=self._slow(),
        )
        self.updates_reported += 1

    def _status_body(self) -> bytes:
        """The report, encoded once per change: a heartbeat repeats the same bytes, as the
        agent's does (the controller answers an unchanged report from its digest)."""
        key = (self.applied, self.last_update, self._inventory_sent)
        if self._status_cache is None or self._status_cache[0] != key:
            report = StatusReport(
                applied_revision=self.applied,
                slots=self.slots,
                active_slot="A" if self.slots else None,
                last_update=self.last_update,
                inventory=None if self._inventory_sent else self.inventory,
            )
            self._status_cache = (key, report.model_dump_json().encode())
        return self._status_cache[1]

    async def _status(self, wire: Wire) -> dict[str, object]:
        body = self._status_body()
        headers = {**await self._bearer(wire), **JSON}
        await self._pause()
        answer = await wire.call(
            "POST status",
            "POST",
            f"/devices/{self.device_id}/status",
            body=body,
            headers=headers,
            slow=self._slow(),
        )
        self._inventory_sent = True
        self.reports += 1
        if self.returning:
            self.returning = False
            self.back_reported = time.monotonic()
        ack: dict[str, object] = answer.json()
        return ack

    async def _upload(self, wire: Wire) -> Answer:
        wall = time.time()
        mono = time.monotonic() - self._booted
        records = []
        for _ in range(self.batch):
            self.seq += 1
            payload = {"label": "person", "score": round(self.rng.random(), 4), "n": self.seq}
            records.append(
                ResultRecord(
                    seq=self.seq,
                    wall=wall,
                    mono=mono,
                    boot_id=self.boot_id,
                    digest="sha256:" + "0" * 64,
                    slot="A",
                    revision=self.applied,
                    payload=json.dumps(payload, separators=(",", ":")),
                )
            )
        batch = ResultBatch(
            epoch=self.epoch, boot_id=self.boot_id, wall=wall, mono=mono, records=records
        )
        body = gzip.compress(batch.model_dump_json().encode(), compresslevel=5)
        headers = {**await self._bearer(wire), **JSON, "Content-Encoding": "gzip"}
        answer = await wire.call(
            "POST results",
            "POST",
            f"/devices/{self.device_id}/results",
            body=body,
            headers=headers,
            slow=self._slow(),
        )
        acked = int(answer.json().get("acked", 0))
        if acked != self.seq:
            wire.recorder.error("POST results", "bad answer", f"acked {acked}, expected {self.seq}")
            raise CallFailed("POST results")
        self.acked = acked
        return answer


def new_serial(tag: str, index: int) -> str:
    """Unique per run (``tag``: the registration token's key id) so a second run against
    the same controller enrols new devices instead of meeting the old hardware ids."""
    return f"sim-{tag}-{index:05d}"


async def _sleep_until(when: float, stop_at: float) -> None:
    await asyncio.sleep(max(0.0, min(when, stop_at) - time.monotonic()))
