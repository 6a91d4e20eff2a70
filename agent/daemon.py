"""The agent's loop: trust the controller, enrol, then follow the desired state.

Every step is idempotent and the loop starts again from the first step that
is not done yet, so any failure is handled the same way: log it, wait (backoff
with jitter, or the server's Retry-After), try again. Only two answers end the
process, because nothing the device can do would change them: an operator
rejected the enrolment, or decommissioned the device.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.agent import identity, trust
from edgefleet.agent.backoff import Backoff, jittered
from edgefleet.agent.claim import Claimer, ClaimRejected
from edgefleet.agent.claim import forget as forget_claim
from edgefleet.agent.client import ControllerClient
from edgefleet.agent.clock import Clock
from edgefleet.agent.drift_windows import DRIFT_DB, DriftWindows
from edgefleet.agent.files import ensure_dir, write_json
from edgefleet.agent.inventory import collect
from edgefleet.agent.qrpayload import learn_controller_id
from edgefleet.agent.reports import Outbox, outcome_of, report_of
from edgefleet.agent.results import RESULTS_DB, RESULTS_FOLDER
from edgefleet.agent.settings import Settings
from edgefleet.agent.shadow_windows import SHADOW_DB, ShadowWindows
from edgefleet.agent.state import DESIRED_FILE, Phase, StateStore
from edgefleet.agent.uploader import Uploader
from edgefleet.errors import (
    ApiError,
    EdgefleetError,
    Forbidden,
    TrustError,
    Unauthorized,
)
from edgefleet.signing import make_assertion, renewal_proof
from edgefleet.wire import (
    MAX_DRIFT_WINDOWS,
    MAX_SHADOW_WINDOWS,
    MAX_TEXT_CHARS,
    AccessToken,
    BufferStats,
    CheckResult,
    ClaimRequest,
    DesiredState,
    DeviceState,
    DriftWindow,
    EnrolRequest,
    EnrolResponse,
    Health,
    InferenceStats,
    Registration,
    RenewRequest,
    ResultAck,
    ResultPolicy,
    ShadowWindow,
    SlotStatus,
    StatusAck,
    StatusReport,
)

if TYPE_CHECKING:
    from edgefleet.agent.k3s.backend import K3sBackend
    from edgefleet.agent.update.applier import SlotApplier

log = logging.getLogger("edgefleet.agent")
T = TypeVar("T")

DEFAULT_INTERVAL_S = 60
TOKEN_REFRESH_FRACTION = 0.8
FINAL_FOR_TOKEN = (400, 401, 403, 404, 409, 410)
"""Enrolment answers that will not change by asking again with the same token.
The device has no other way in, so it keeps asking, slowly (token_backoff_cap),
in case an operator fixes the token's allow-list, use limit or approval."""


class Stopped(Exception):
    """SIGTERM/SIGINT asked the agent to stop; not an error."""


class Rejected(EdgefleetError):
    """An operator rejected this device's enrolment. Exit code 3."""

    default_code = "rejected"


class Decommissioned(EdgefleetError):
    """The controller decommissioned this device; its credentials are dead. Exit code 4."""

    default_code = "device_decommissioned"


class Agent:
    """One device agent; :meth:`run` returns when stopped or (with ``once``) after one cycle."""

    def __init__(
        self,
        settings: Settings,
        registration: Registration,
        stop: threading.Event | None = None,
        applier: SlotApplier | None = None,
        rng: random.Random | None = None,
        k3s: K3sBackend | None = None,
    ) -> None:
        self.settings = settings
        self.registration = registration
        self.stop = stop or threading.Event()
        self.rng = rng or random.Random()
        self.state_dir = ensure_dir(settings.state_dir)
        self._applier = applier
        if applier is None and any(
            (self.state_dir / name).exists() for name in ("slots", "update")
        ):
            # a slot to serve, or an update to finish, before anything else
            self._applier = self._load_applier()
        self.store = StateStore(self.state_dir)
        self.clock = Clock()
        self.backoff = Backoff(settings.backoff_base, settings.backoff_cap, rng=self.rng)
        self.token_backoff = Backoff(
            settings.backoff_base, settings.token_backoff_cap, rng=self.rng
        )
        # Before any request: a retried enrolment must present the same key.
        identity.settle_renewal(self.state_dir)
        self.key = identity.load_or_create_key(self.state_dir)
        self.enrolment = identity.load_enrolment(self.state_dir)
        self.inventory = collect(
            settings.serial, settings.hardware_id, settings.mode, settings.node_name
        )
        self.client: ControllerClient | None = None
        self._roots = ""
        self.interval = float(self.store.current.interval_seconds or DEFAULT_INTERVAL_S)
        self._access_token: str | None = None
        self._token_refresh_at = 0.0
        self._desired_checked = False
        self._controller_etag: str | None = None
        """K3s mode: the device API's desired state last read for what Git does not
        carry (the trust bundle, the operator's update retries)."""
        self._inventory_reported = False
        self._apply_error: str | None = None
        self.outbox = Outbox(self.state_dir)
        self._token_lock = threading.Lock()
        self.uploader = Uploader(self.state_dir / RESULTS_FOLDER / RESULTS_DB, self._post_results)
        self._upload_thread: threading.Thread | None = None
        self._upload_client: ControllerClient | None = None
        self._upload_roots = ""
        self._capacity_warned: ResultPolicy | None = None
        self._claimer: Claimer | None = None
        self._drift: DriftWindows | None = None
        self._shadow: ShadowWindows | None = None
        self.k3s = k3s
        if k3s is None and settings.mode == "k3s":
            from edgefleet.agent.k3s.backend import K3sBackend  # loads kubernetes

            self.k3s = K3sBackend.from_settings(settings)
        self._fetch_desired = self._desired_from_api if self.k3s is None else self.k3s.desired
        """Where the desired state comes from: the device API, or (``mode: k3s``) the
        ConfigMap in the cluster; everything else is the same in both modes."""

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        """Loop until stopped; with ``settings.once``, return 0 after one full cycle."""
        try:
            while True:
                try:
                    if self.client is None:
                        self._establish_trust()
                    if self.enrolment is None:
                        self._enrol()
                        continue
                    self._cycle()
                except (Rejected, Decommissioned):
                    raise
                except EdgefleetError as exc:
                    self._wait(self._after_failure(exc))
                    continue
                self.backoff.reset()
                self.token_backoff.reset()
                if self.uploader.failing:
                    self.uploader.wake()  # the controller answers again: upload now
                if self.settings.once:
                    return 0
                self._wait(jittered(self.interval, self.rng))
        except Stopped:
            log.info("stopping")
            return 0
        finally:
            if self._upload_thread is not None:
                self.uploader.wake()
                self._upload_thread.join()
            if self._upload_client is not None:
                self._upload_client.close()
            if self._applier is not None:
                self._applier.close()
            if self.k3s is not None:
                self.k3s.close()
            if self.client is not None:
                self.client.close()

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped

    def _after_failure(self, exc: EdgefleetError) -> float:
        """Log a failure once, in the controller's words, and say how long to wait."""
        if isinstance(exc, Forbidden) and exc.code == Decommissioned.default_code:
            self._decommissioned(exc.message)
        if isinstance(exc, TrustError):
            self._drop_trust()
        retry_after = exc.retry_after if isinstance(exc, ApiError) else None
        delay = self.backoff.next_delay(retry_after)
        what = f"{type(exc).__name__}({exc.code})"
        log.warning("%s: %s; retrying in %.1fs", what, exc.message, delay)
        self.store.update(last_error=f"{what}: {exc.message}")
        return delay

    # -- trust ------------------------------------------------------------------

    def _establish_trust(self) -> None:
        reg = self.registration
        roots = trust.load_trust(self.state_dir, reg.root_pins)
        if roots is None:
            if self.enrolment is None:
                self.store.update(phase=Phase.trusting)
            try:
                roots = trust.fetch_pinned_roots(
                    reg.controller_url, reg.root_pins, self.settings.http_timeout
                )
            except TrustError as exc:
                log.error(
                    "REFUSING controller %s: %s. Check that the registration file's "
                    "root_pins match the controller's root CA (`edgefleet controller pin`).",
                    reg.controller_url,
                    exc.message,
                )
                raise
            trust.save_trust(self.state_dir, roots)
            log.info("pinned controller %s (root matches a registration pin)", reg.controller_url)
        self._connect(roots)

    def _connect(self, roots: str) -> None:
        if self.client is not None:
            self.client.close()
        self.client = ControllerClient(
            self.registration.controller_url,
            trust.ssl_context(roots),
            self.clock,
            self.settings.http_timeout,
        )
        self._roots = roots

    def _learn_trust(self, bundle: list[str]) -> None:
        """Take up roots from the desired state's trust bundle that a root we trust vouches
        for (CA rotation): the controller can then switch roots without losing us."""
        if not bundle:
            return
        roots = trust.extend_trust(self._roots, bundle, self.registration.root_pins)
        if roots != self._roots:
            trust.save_trust(self.state_dir, roots)
            log.info("trust bundle changed; now trusting %d certificate(s)", roots.count("BEGIN"))
            self._connect(roots)

    def _drop_trust(self) -> None:
        """After a verification failure, fetch (and pin-check) the chain again: the
        controller may have moved to a backup root listed in the pins."""
        if self.client is not None:
            self.client.close()
            self.client = None
        path = self.state_dir / trust.TRUST_FILE
        if path.exists():
            path.replace(path.with_name(trust.TRUST_FILE + ".rejected"))

    # -- enrolment --------------------------------------------------------------

    def _enrol(self) -> None:
        """With the registration's token, or (none flashed) by a QR claim a person
        approves; either way the same enrolment follows."""
        assert self.client is not None
        started = time.monotonic()
        if self.store.current.phase not in (Phase.enrolling, Phase.awaiting_approval):
            self.store.update(phase=Phase.enrolling)
        resp = self._enrol_with_token() if self.registration.token else self._claim()
        self._adopt(resp, started)

    def _csr(self) -> str:
        common_name = self.inventory.serial or self.inventory.hostname or "edgefleet-device"
        return identity.make_csr(self.key, common_name, self.inventory.serial)

    def _enrol_with_token(self) -> EnrolResponse:
        assert self.client is not None and self.registration.token
        req = EnrolRequest(token=self.registration.token, csr=self._csr(), inventory=self.inventory)
        while True:
            try:
                resp = self.client.enrol(req)
            except ApiError as exc:
                if exc.status == 403 and exc.code == "rejected":
                    self._rejected(exc.message)
                if exc.status in FINAL_FOR_TOKEN:
                    delay = self.token_backoff.next_delay()
                    log.error(
                        "enrolment refused: %s (%s); the registration token must be fixed "
                        "on the controller; asking again in %.0fs",
                        exc.message,
                        exc.code,
                        delay,
                    )
                    self.store.update(last_error=f"enrolment refused ({exc.code}): {exc.message}")
                    self._wait(delay)
                    continue
                raise
            if resp.state == DeviceState.rejected:
                self._rejected(resp.message or "enrolment rejected")
            if resp.state == DeviceState.awaiting_approval:
                delay = jittered(float(resp.retry_after_seconds or self.interval), self.rng)
                if self.store.current.phase != Phase.awaiting_approval:
                    log.info(
                        "awaiting operator approval device_id=%s; asking again every ~%.0fs",
                        resp.device_id,
                        delay,
                    )
                self.store.update(
                    phase=Phase.awaiting_approval, device_id=resp.device_id, last_error=None
                )
                self.backoff.reset()
                self._wait(delay)
                continue
            return resp

    def _claim(self) -> EnrolResponse:
        """Show a QR claim and poll it until a person decides (``agent/claim.py``)."""
        assert self.client is not None
        if self._claimer is None:
            self._claimer = Claimer(self.state_dir, self.registration.controller_url)
        req = ClaimRequest(csr=self._csr(), inventory=self.inventory)
        while True:
            try:
                resp = self._claimer.step(self.client, req)
            except ClaimRejected as exc:
                forget_claim(self.state_dir)  # a restart shows a new claim, for a new scan
                self._rejected(str(exc), "restart the agent to show a new claim and scan that")
            except ApiError as exc:
                if exc.status not in FINAL_FOR_TOKEN or exc.code == "claim_secret":
                    raise
                delay = self.token_backoff.next_delay()
                log.error(
                    "the controller refused this device's claim: %s (%s); asking again in %.0fs",
                    exc.message,
                    exc.code,
                    delay,
                )
                self.store.update(last_error=f"claim refused ({exc.code}): {exc.message}")
                self._wait(delay)
                continue
            if resp is not None:
                return resp
            if self.store.current.phase != Phase.awaiting_approval:
                self.store.update(phase=Phase.awaiting_approval, last_error=None)
            self.backoff.reset()
            self._wait(self._claimer.pause)

    def _adopt(self, resp: EnrolResponse, started: float) -> None:
        """Keep what an enrolment answered: the certificate, the device id, the controller."""
        # A QR payload names no controller id: the answer does (hook for agent/qrpayload.py).
        self.registration = learn_controller_id(
            self.state_dir, self.registration, resp.controller_id
        )
        if not resp.certificate_chain:
            raise ApiError(
                f"the controller answered state {resp.state} without a certificate chain",
                code="bad_response",
            )
        enrolment = identity.Enrolment(
            device_id=resp.device_id,
            enrolled_at=datetime.now(UTC).isoformat(timespec="seconds"),
            profile=resp.profile,
        )
        identity.save_enrolment(self.state_dir, self.key, enrolment, resp.certificate_chain)
        self.enrolment = enrolment
        self.interval = float(resp.interval_seconds)
        self.store.update(
            phase=Phase.enrolled,
            device_id=enrolment.device_id,
            enrolled_at=enrolment.enrolled_at,
            interval_seconds=resp.interval_seconds,
            last_error=None,
        )
        forget_claim(self.state_dir)
        log.info(
            "enrolled device_id=%s profile=%s in %.2fs",
            enrolment.device_id,
            enrolment.profile,
            time.monotonic() - started,
        )

    def _rejected(
        self,
        message: str,
        remedy: str = "approve the device on the controller or flash a new token, then "
        "restart the agent",
    ) -> None:
        self.store.update(phase=Phase.rejected, last_error=message)
        raise Rejected(
            f"an operator rejected this device's enrolment ({message}); the agent stops. "
            f"To try again, {remedy}."
        )

    def _decommissioned(self, message: str) -> None:
        self.store.update(phase=Phase.decommissioned, last_error=message)
        raise Decommissioned(
            f"the controller decommissioned this device ({message}); its credentials no "
            "longer work and the agent stops. To bring it back, delete the state folder "
            f"{self.state_dir} and enrol it again with a new registration token."
        )

    # -- access token -----------------------------------------------------------

    def _bearer(self, client: ControllerClient | None = None) -> str:
        """A valid access token, refreshed at 80% of its lifetime. The uploader thread
        passes its own ``client``; only the main loop renews an expired certificate."""
        assert self.client is not None and self.enrolment is not None
        with self._token_lock:
            if self._access_token is None or time.monotonic() >= self._token_refresh_at:
                enrolment = self.enrolment
                try:
                    token = self._exchange(enrolment, client or self.client)
                except Unauthorized as exc:
                    if exc.code != "certificate_expired" or client is not None:
                        raise
                    log.warning(
                        "certificate expired while offline; re-enrolling with the device key"
                    )
                    self._renew()
                    token = self._exchange(enrolment, self.client)
                self._access_token = token.access_token
                self._token_refresh_at = (
                    time.monotonic() + TOKEN_REFRESH_FRACTION * token.expires_in
                )
                log.debug("access token refreshed, valid %ss", token.expires_in)
            return self._access_token

    def _exchange(self, enrolment: identity.Enrolment, client: ControllerClient) -> AccessToken:
        return client.token(
            lambda: make_assertion(
                self.key,
                enrolment.device_id,
                self.registration.controller_id,
                now=self.clock.now(),
            )
        )

    def _renew(self) -> None:
        """New key and certificate, proven by the current key (or, if the controller
        already took the new key in a renewal whose answer was lost, by that one)."""
        assert self.client is not None and self.enrolment is not None
        device_id = self.enrolment.device_id
        nxt = identity.load_or_create_key(self.state_dir, identity.NEXT_KEY_FILE)
        common_name = self.inventory.serial or self.inventory.hostname or "edgefleet-device"
        csr = identity.make_csr(nxt, common_name, self.inventory.serial)
        for signer in (self.key, nxt):

            def request(signer: ec.EllipticCurvePrivateKey = signer) -> RenewRequest:
                proof = renewal_proof(
                    signer, device_id, self.registration.controller_id, csr, self.clock.now()
                )
                return RenewRequest(csr=csr, proof=proof)

            try:
                resp = self.client.renew(device_id, request)
                break
            except Unauthorized as exc:
                if exc.code != "bad_signature" or signer is nxt:
                    raise
        assert resp.certificate_chain
        self.key = identity.adopt_next_key(self.state_dir, resp.certificate_chain, self.enrolment)
        self._access_token = None
        log.info("certificate renewed with a new key device_id=%s (%s)", device_id, resp.message)

    def _authorized(self, call: Callable[[str], T], client: ControllerClient | None = None) -> T:
        """Run ``call(token)``; after a 401, refresh the token once and retry once."""
        try:
            return call(self._bearer(client))
        except Unauthorized:
            log.info("access token refused; getting a new one")
            self._access_token = None
            return call(self._bearer(client))

    # -- results ----------------------------------------------------------------

    def _start_uploads(self) -> None:
        """The uploader thread, once enrolled and once there are results to send (a
        device that serves no model keeps its idle memory)."""
        if self._upload_thread is not None:
            return
        if not (self.uploader.path.exists() or self._applier is not None):
            return
        assert self.enrolment is not None
        self.uploader.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._upload_thread = threading.Thread(
            target=self.uploader.run, args=(self.stop,), name="uploader", daemon=True
        )
        self._upload_thread.start()

    def _post_results(self, body: Callable[[], bytes]) -> ResultAck:
        """The uploader's call, on its own connection (the main loop keeps its own)."""
        assert self.enrolment is not None
        roots = self._roots
        if self._upload_client is None or self._upload_roots != roots:
            if self._upload_client is not None:
                self._upload_client.close()
            self._upload_client = ControllerClient(
                self.registration.controller_url,
                trust.ssl_context(roots),
                self.clock,
                self.settings.http_timeout,
            )
            self._upload_roots = roots
        client = self._upload_client
        device_id = self.enrolment.device_id
        return self._authorized(lambda t: client.upload_results(device_id, t, body), client)

    # -- desired state and status -----------------------------------------------

    def _cycle(self) -> None:
        """One reconcile step: desired state (if due), status, and a re-check the ack asks for."""
        if identity.renewal_due(self.state_dir, self.clock.now()):
            self._renew()
        if not self._desired_checked or self.k3s is not None:  # a ConfigMap sends no ETag
            self._sync_desired()
        if self.k3s is not None:
            self.k3s.serve()
        self._start_uploads()
        ack = self._report()
        if self.k3s is None and ack.desired_etag != self.store.current.desired_etag:
            log.info("controller has a new desired state (etag %s)", ack.desired_etag)
            if self._sync_desired():
                self._report()
        elif self.k3s is not None and ack.desired_etag != self._controller_etag:
            self._sync_controller_fields()
        self._send_reports()

    def _sync_controller_fields(self) -> None:
        """K3s mode: the revision comes from the ConfigMap, but the trust bundle and the
        operator's update retries live only in the controller (not in Git): read them
        from the device API whenever its ETag moves. A retry makes the next cycle apply
        the ConfigMap's state again, even though it did not change."""
        assert self.enrolment is not None
        desired, etag = self._desired_from_api(self.enrolment.device_id, self._controller_etag)
        self._controller_etag = etag
        if desired is None:
            return
        self._learn_trust(desired.trust_bundle)
        if self._take_retries(desired):
            self.store.update(desired_etag=None)

    def _take_retries(self, desired: DesiredState) -> bool:
        """An operator retry (a higher ``update_retries``) lets ``desired.revision`` be
        tried again where a slot failed it. True if there was a new one."""
        if desired.update_retries <= self.store.current.update_retries:
            return False
        self.applier.retry(desired.revision)
        self.store.update(update_retries=desired.update_retries)
        return True

    def _sync_desired(self) -> bool:
        """Fetch the desired state unless unchanged (304); apply it if new. True if applied."""
        assert self.client is not None and self.enrolment is not None
        device_id = self.enrolment.device_id
        desired, new_etag = self._fetch_desired(device_id, self.store.current.desired_etag)
        self._desired_checked = True
        if desired is None:
            return False
        self._apply(desired, new_etag)
        return True

    def _desired_from_api(
        self, device_id: str, etag: str | None
    ) -> tuple[DesiredState | None, str | None]:
        assert self.client is not None
        return self._authorized(lambda t: self.client.desired(device_id, t, etag))

    @property
    def applier(self) -> SlotApplier:
        """The A/B slot engine, loaded with the first model (or at start when a slot
        holds one): an agent that serves none keeps its idle memory budget."""
        if self._applier is None:
            self._applier = self._load_applier()
        return self._applier

    def _load_applier(self) -> SlotApplier:
        from edgefleet.agent.slots.image import ImageSlots
        from edgefleet.agent.update.applier import SlotApplier

        images = dict(self.settings.slot_images)
        return SlotApplier(
            self.state_dir,
            self.settings.sockets,
            self._registry_token,
            list(self.settings.registry_mirrors),
            self.settings.model_threads,
            slots=ImageSlots(images, self.state_dir / "slots-mnt") if images else None,
        )

    def _registry_token(self, scope: str) -> str:
        """A registry pull token for ``scope``, from the controller (the runner's models)."""
        assert self.client is not None and self.enrolment is not None
        device_id = self.enrolment.device_id
        scopes = scope.split()
        answer = self._authorized(lambda t: self.client.registry_token(device_id, t, scopes))
        return answer.token

    def _apply(self, desired: DesiredState, etag: str | None) -> None:
        write_json(self.state_dir / DESIRED_FILE, desired.model_dump(mode="json"))
        self._learn_trust(desired.trust_bundle)
        self.uploader.configure(desired.results)
        self._take_retries(desired)
        self._apply_shadow(desired)
        try:
            serving = desired.models or self._applier is not None
            revision = self.applier.apply(desired) if serving else desired.revision
        except EdgefleetError as exc:
            # The running revision keeps serving; the next cycle fetches this one again
            # (its ETag was not recorded) and the status report says why it is not applied.
            self._apply_error = f"revision {desired.revision}: {exc.message}"
            log.warning("applying desired revision %s failed: %s", desired.revision, exc.message)
            self.store.update(last_error=self._apply_error)
            return
        finally:
            self._queue_report()
        self._apply_error = None
        self.interval = float(desired.interval_seconds)
        self.store.update(
            applied_revision=revision,
            desired_etag=etag,
            interval_seconds=desired.interval_seconds,
        )
        log.info("applied desired state revision=%s profile=%s", revision, desired.profile)

    def _apply_shadow(self, desired: DesiredState) -> None:
        """Before the revision: a plan that goes away stops before a new revision's
        runners start (they would start with it). Never fatal: a candidate that cannot
        run is reported in the health checks, and the active models serve on."""
        if self._applier is None and not (desired.shadow and desired.models):
            return  # nothing serves, nothing to compare with: no applier loaded for it
        try:
            self.applier.apply_shadow(desired)
        except EdgefleetError as exc:
            log.warning("shadow plan not applied: %s", exc.message)

    def _queue_report(self) -> None:
        """Put the last update attempt's report in the outbox, once per attempt."""
        outcome = self._applier.last_outcome() if self._applier is not None else None
        if outcome is None:
            return
        key = f"{outcome.revision}@{outcome.started_at}"
        if key == self.store.current.reported_update:
            return
        try:
            bundle = json.loads(Path(outcome.evidence).read_text())
            self.outbox.put(report_of(bundle))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot report update attempt %s: %s", key, exc)
        self.store.update(reported_update=key)

    def _send_reports(self) -> None:
        """Upload waiting update reports; an unreachable controller leaves them for later."""
        if not self.outbox.pending():
            return
        assert self.client is not None and self.enrolment is not None
        device_id = self.enrolment.device_id
        sent = self.outbox.flush(
            lambda r: self._authorized(lambda t: self.client.report_update(device_id, t, r))
        )
        log.info("uploaded %d update report(s)", sent)

    def _slots(self) -> dict[str, Any]:
        if self._applier is None:
            return {}
        record = self._applier.slots()
        outcome = self._applier.last_outcome()
        return {
            "slots": [
                SlotStatus(
                    name=name,
                    state=info.state,
                    revision=info.revision,
                    reason=info.reason[:MAX_TEXT_CHARS],
                )
                for name, info in sorted(record.slots.items())
            ],
            "active_slot": record.active,
            "last_update": None if outcome is None else outcome_of(asdict(outcome)),
        }

    def _buffer_stats(self) -> BufferStats:
        stats = self.uploader.stats()
        if stats is None:
            return BufferStats()
        self._check_capacity(stats.capacity_hours)
        return BufferStats(
            depth=stats.depth,
            bytes=stats.bytes,
            oldest_age_seconds=stats.oldest_age_seconds,
            drops=stats.drops,
            cap_bytes=stats.cap_bytes,
            capacity_hours=stats.capacity_hours,
        )

    def _check_capacity(self, hours: float | None) -> None:
        """Say once per profile when the buffer cannot hold the retention it asks for."""
        policy = self.uploader.policy
        if policy is None or hours is None or hours >= policy.retention_hours:
            return
        if self._capacity_warned == policy:
            return
        self._capacity_warned = policy
        log.warning(
            "the result buffer holds about %.1f h of results at %g a second (the records' "
            "mean size), less than the profile's retention of %g h: raise results.max_bytes "
            "or the device drops results (policy %s) during a long outage",
            hours,
            policy.rate_per_second,
            policy.retention_hours,
            policy.policy,
        )

    def _health(self) -> Health:
        """A shadow candidate that does not run is listed (``shadow <model>``) but leaves
        the device healthy: its active models serve, and a rollout gating on health must
        not stop for a comparison that could not be made."""
        checks = []
        if self._apply_error is not None:
            detail = self._apply_error[:MAX_TEXT_CHARS]
            checks.append(CheckResult(name="apply", ok=False, detail=detail))
        if self.k3s is not None and self.enrolment is not None:
            checks.extend(self.k3s.checks(self.enrolment.device_id))
        ok = all(c.ok for c in checks)
        if self._applier is not None:
            checks.extend(self._applier.shadow_checks())
        return Health(ok=ok, checks=checks)

    def _inference(self) -> InferenceStats:
        """From the runners serving the active set; none serve before the first model."""
        if self._applier is None:
            return InferenceStats()
        from edgefleet.agent.inference import collect  # loaded with the first model

        return collect(self._applier.runners())

    def _drift_windows(self) -> list[DriftWindow]:
        """The runners' closed drift windows for this report: each model's latest and
        those the controller does not have yet (see ``drift_windows``)."""
        folder = self.state_dir / RESULTS_FOLDER
        if self._drift is None:
            if not (folder / DRIFT_DB).exists():
                return []  # no runner monitors drift: no SQLite file opened for nothing
            self._drift = DriftWindows(folder)
        windows = []
        for doc in self._drift.for_report(MAX_DRIFT_WINDOWS):
            try:
                windows.append(DriftWindow.model_validate(doc))
            except ValueError as exc:
                log.warning("drift window %s not reported (%s)", doc.get("start"), exc)
        return windows

    def _shadow_windows(self) -> list[ShadowWindow]:
        """The runners' ended shadow windows the controller does not have yet, oldest
        first (see ``shadow_windows``)."""
        folder = self.state_dir / RESULTS_FOLDER
        if self._shadow is None:
            if not (folder / SHADOW_DB).exists():
                return []  # no runner ran a shadow: no SQLite file opened for nothing
            self._shadow = ShadowWindows(folder)
        windows = []
        for doc in self._shadow.for_report(MAX_SHADOW_WINDOWS):
            try:
                windows.append(ShadowWindow.model_validate(doc))
            except ValueError as exc:
                log.warning("shadow window %s dropped, it cannot be reported: %s", doc, exc)
                self._shadow.forget(doc)
        return windows

    def _report(self) -> StatusAck:
        assert self.client is not None and self.enrolment is not None
        device_id = self.enrolment.device_id
        drift = self._drift_windows()
        shadow = self._shadow_windows()
        report = StatusReport(
            drift=drift,
            shadow=shadow,
            applied_revision=self.store.current.applied_revision,
            inventory=None if self._inventory_reported else self.inventory,
            health=self._health(),
            buffer=self._buffer_stats(),
            inference=self._inference(),
            gitops=None if self.k3s is None else self.k3s.gitops(device_id),
            **self._slots(),
        )
        ack = self._authorized(lambda t: self.client.status(device_id, t, report))
        self._inventory_reported = True
        if drift and self._drift is not None:
            self._drift.delivered([w.model_dump(mode="json") for w in drift])
        if shadow and self._shadow is not None:
            self._shadow.delivered([w.model_dump(mode="json") for w in shadow])
        if ack.state == DeviceState.decommissioned:
            self._decommissioned("status acknowledged with state decommissioned")
        self.interval = float(ack.interval_seconds)
        phase = (
            Phase.ready if ack.state != DeviceState.awaiting_approval else self.store.current.phase
        )
        if self.store.current.phase != phase:
            log.info("ready device_id=%s interval=%ss", device_id, ack.interval_seconds)
        self.store.update(phase=phase, interval_seconds=ack.interval_seconds, last_error=None)
        return ack
