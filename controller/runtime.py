"""Everything one worker process holds: settings, engine, PKI, token keys, caches.

Built by the app factory and kept on ``app.state.rt``. The caches here answer
the hot device calls without a database round trip; the epoch (``cachebus``) drops
them in every worker of every replica when anyone commits a change they depend on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from edgefleet.controller.access import AccessTokens
from edgefleet.controller.assertion_ledger import AssertionLedger
from edgefleet.controller.buffers import device_buffers
from edgefleet.controller.cachebus import epoch_for
from edgefleet.controller.db import make_engine
from edgefleet.controller.gitops.writer import GitopsWriter
from edgefleet.controller.keyring import Keyring
from edgefleet.controller.lastseen import LastSeen
from edgefleet.controller.metrics import DriftGauges, Metrics, ShadowGauges
from edgefleet.controller.model_pins import origin
from edgefleet.controller.models import Device, Profile, ProfileRevision, aware
from edgefleet.controller.pki.authority import Authority, load_authority
from edgefleet.controller.registry_tokens import RegistryTokens
from edgefleet.controller.rollouts.nudge import Nudge
from edgefleet.controller.rollouts.shadow import ShadowWave, changed_models, key_of, shadow_waves
from edgefleet.controller.rollouts.store import rollout_counts
from edgefleet.controller.rollouts.watch import Watch
from edgefleet.controller.settings import Settings
from edgefleet.controller.status_samples import StatusSampler
from edgefleet.errors import ConfigError
from edgefleet.wire import (
    DesiredState,
    DeviceState,
    DriftPolicy,
    HealthPolicy,
    ModelRef,
    ModelSignaturePolicy,
    ResultPolicy,
    ShadowModel,
    ShadowPlan,
)

PARENT_KEY = "parent"
"""The shadow key of a quantized model compared with its full-precision parent."""
PARENT_SAMPLE_RATE = 0.1
"""A parent comparison runs all the time: by default on a tenth of the inferences (the
profile's ``shadow.sample_rate`` says otherwise)."""
PARENT_WINDOW_SECONDS = 300


@dataclass(frozen=True, slots=True)
class DeviceAuth:
    state: DeviceState
    generation: int
    public_key: ec.EllipticCurvePublicKey
    site_id: int
    certificate_expires_at: float | None
    """Unix time; None while no certificate was issued."""


@dataclass(frozen=True, slots=True)
class DesiredEntry:
    etag: str
    body: bytes
    interval_seconds: int


def controller_id_file(settings: Settings) -> str:
    path = settings.data_dir / "controller-id"
    if not path.exists():
        raise ConfigError(
            f"{path} is missing: run `edgefleet controller migrate` (or `serve`) to set up "
            f"the data directory {settings.data_dir}"
        )
    return path.read_text().strip()


class Runtime:
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.effective_database_url)
        self.controller_id = settings.controller_id or controller_id_file(settings)
        self.authority: Authority = load_authority(
            settings.data_dir / "pki", settings.key_passphrase_bytes()
        )
        self.keyring = Keyring(settings, self.engine)
        """Signing keys; a rotation on any worker or replica reaches it via the epoch."""
        self.access = AccessTokens(
            self.keyring,
            self.controller_id,
            settings.access_token_ttl_seconds,
            settings.clock_tolerance_seconds,
        )
        self.assertions = AssertionLedger(self.engine)
        """Spent device assertions (replays refused), recorded in group commits."""
        self.last_seen = LastSeen(self.engine)
        self.status_samples = StatusSampler(self.engine, settings.status_sample_seconds)
        """The charts' status history, written behind with last seen."""
        self.metrics = Metrics(
            self.count_devices_by_state,
            lambda: device_buffers(self.engine),
            lambda: rollout_counts(self.engine),
            self._drift_gauges,
            self._shadow_gauges,
        )
        self._auth: dict[str, DeviceAuth] = {}
        self._desired: dict[str, DesiredEntry] = {}
        self._shadow_waves: dict[str, list[ShadowWave]] = {}
        """The waves in their shadow phase, read once per epoch (``rollouts/shadow.py``)."""
        self.status_digests: dict[str, tuple[str, DeviceState]] = {}
        self.watch = Watch(self.engine)
        """Devices rollouts wait on, for the status hook."""
        self.nudge = Nudge(self.engine)
        """Wakes the rollout driver, in whichever process it runs."""
        self.epoch = epoch_for(settings, self.engine)
        self.epoch.subscribe(self._drop_caches)
        self.keyring.follow(self.epoch)
        self.gitops = GitopsWriter(settings, self.engine, self.metrics)
        self.registry_tokens = RegistryTokens.from_settings(settings, self.keyring)

    def _drop_caches(self) -> None:
        self._auth = {}
        self._desired = {}
        self._shadow_waves = {}
        self.status_digests = {}
        self.watch.drop()

    def changed(self) -> None:
        """Call after committing a change to credentials, state or desired state."""
        self.epoch.bump()

    # -- device credentials -------------------------------------------------------

    def device_auth(self, device_id: str) -> DeviceAuth | None:
        """The device's state, credential generation and key; loaded once per epoch."""
        cache = self._auth  # a drop during the read discards this dict, and what it learnt
        hit = cache.get(device_id)
        if hit is not None:
            return hit
        with Session(self.engine) as s:
            row = s.get(Device, device_id)
            if row is None:
                return None
            key = serialization.load_pem_public_key(row.public_key_pem.encode())
            assert isinstance(key, ec.EllipticCurvePublicKey)
            expires = aware(row.certificate_not_after)
            found = DeviceAuth(
                DeviceState(row.state),
                row.credential_generation,
                key,
                row.site_id,
                expires.timestamp() if expires else None,
            )
        cache[device_id] = found
        return found

    def cached_auth(self, device_id: str) -> DeviceAuth | None:
        return self._auth.get(device_id)

    # -- desired state ------------------------------------------------------------

    def cached_desired(self, device_id: str) -> DesiredEntry | None:
        return self._desired.get(device_id)

    def desired(self, device_id: str) -> DesiredEntry:
        cache = self._desired  # as in device_auth: never store a pre-drop read after it
        hit = cache.get(device_id)
        if hit is not None:
            return hit
        entry = self._build_desired(device_id)
        cache[device_id] = entry
        return entry

    def _build_desired(self, device_id: str) -> DesiredEntry:
        with Session(self.engine) as s:
            device = s.get(Device, device_id)
            assert device is not None, "desired state asked for an unknown device"
            profile_name, number, spec = None, 0, {}
            retries = device.update_retries
            if device.profile_id is not None:
                profile = s.get(Profile, device.profile_id)
                assert profile is not None
                rev = s.scalars(
                    select(ProfileRevision).where(
                        ProfileRevision.profile_id == profile.id,
                        ProfileRevision.number
                        == (device.profile_revision or profile.followed_revision),
                    )
                ).first()
                profile_name = profile.name
                if rev is not None:
                    number, spec = rev.number, rev.spec
        # The spec was validated on apply (profiles/schema.json): references are pinned.
        policies = spec.get("policies", {})
        shadow = self._shadow_plan(device_id, device.profile_id, spec)
        state = DesiredState(
            device_id=device_id,
            profile=profile_name,
            revision=number,
            models=[self._model_ref(m["name"], m["reference"]) for m in spec.get("models", [])],
            config=spec.get("config", {}),
            interval_seconds=int(
                policies.get("interval_seconds", self.settings.device_interval_seconds)
            ),
            trust_bundle=self.authority.trust_bundle,
            health=HealthPolicy.from_policies(policies),
            results=ResultPolicy.model_validate(spec.get("results", {})),
            model_signatures=ModelSignaturePolicy.from_profile(spec),
            update_retries=retries,
            drift=DriftPolicy.from_profile(spec),
            shadow=shadow,
        )
        body = json.dumps(state.body(), separators=(",", ":")).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return DesiredEntry(etag, body, state.interval_seconds)

    def _model_ref(self, name: str, reference: str) -> ModelRef:
        return ModelRef(
            name=name,
            reference=reference,
            digest=reference.rsplit("@")[-1],
            origin=origin(self.settings, reference.split("/", 1)[0]),
        )

    def _shadow_plan(
        self, device_id: str, profile_id: int | None, spec: dict[str, Any]
    ) -> ShadowPlan | None:
        """What the device runs in shadow: a rollout wave's candidates while the wave is in
        its shadow phase, else each quantized model's full-precision ``parent``; at most
        one candidate per active model, a rollout's first. None: nothing (the body and
        the ETag are then what they were before shadows existed)."""
        models = spec.get("models", [])
        chosen: dict[str, ShadowModel] = {}
        sample_rate, window = None, None
        for wave in self.shadow_waves():
            if device_id not in wave.devices or wave.profile_id != profile_id:
                continue
            for m in changed_models(models, wave.target_models):
                chosen.setdefault(
                    m["name"],
                    ShadowModel(
                        key=key_of(wave.rollout_id),
                        active=m["name"],
                        model=self._model_ref(m["name"], m["reference"]),
                    ),
                )
                sample_rate, window = wave.sample_rate, wave.window_seconds
        for m in models:
            if m.get("parent") and m["name"] not in chosen:
                chosen[m["name"]] = ShadowModel(
                    key=PARENT_KEY, active=m["name"], model=self._model_ref(m["name"], m["parent"])
                )
        if not chosen:
            return None
        section = spec.get("shadow", {})
        return ShadowPlan(
            models=list(chosen.values()),
            sample_rate=sample_rate or section.get("sample_rate", PARENT_SAMPLE_RATE),
            window_seconds=window or section.get("window_seconds", PARENT_WINDOW_SECONDS),
        )

    def shadow_waves(self) -> list[ShadowWave]:
        cache = self._shadow_waves  # as in device_auth: a drop discards what this read
        if "waves" not in cache:
            cache["waves"] = shadow_waves(self.engine)
        return cache["waves"]

    # -- metrics ------------------------------------------------------------------

    def _drift_gauges(self) -> DriftGauges:
        from edgefleet.controller.services import drift  # it imports this module

        return drift.gauges(self)

    def _shadow_gauges(self) -> ShadowGauges:
        from edgefleet.controller.services import shadow  # it imports this module

        return shadow.gauges(self)

    def count_devices_by_state(self) -> dict[str, int]:
        with Session(self.engine) as s:
            rows = s.execute(select(Device.state, func.count()).group_by(Device.state)).all()
        return {state: n for state, n in rows}
