"""Database tables. The database holds intent and records; caches never outrank it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def _ts(*, nullable: bool, index: bool = False) -> Any:
    col = Column(DateTime(timezone=True), nullable=nullable, index=index)
    if nullable:
        return Field(default=None, sa_column=col)
    return Field(default_factory=utcnow, sa_column=col)


BigId = BigInteger().with_variant(Integer(), "sqlite")
"""64-bit on PostgreSQL; SQLite's INTEGER is 64-bit already and only it is a rowid alias."""


def _json(default: Any) -> Any:
    return Field(default_factory=default, sa_column=Column(JSON, nullable=False))


class Site(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    timezone: str = Field(default="UTC", max_length=64)
    labels: dict[str, str] = _json(dict)
    maintenance_windows: list[str] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False, server_default="[]"),
    )
    """When rollouts may update the site's devices, in its own time zone, as the operator
    wrote them (``rollouts/windows.py`` reads them); none: at any time."""
    created_at: datetime = _ts(nullable=False)


class Profile(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    latest_revision: int = 0
    released_revision: int | None = None
    """The revision devices that follow the profile get; None: the latest. Set by
    ``profiles apply --hold`` and by rollouts, which move it when they complete."""
    created_at: datetime = _ts(nullable=False)

    @property
    def followed_revision(self) -> int:
        """What a device without a pinned revision runs."""
        return self.released_revision or self.latest_revision


class ProfileRevision(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("profile_id", "number"),)
    id: int | None = Field(default=None, primary_key=True)
    profile_id: int = Field(foreign_key="profile.id", index=True)
    number: int
    digest: str = Field(max_length=80)
    spec: dict[str, Any] = _json(dict)
    created_at: datetime = _ts(nullable=False)
    created_by: str = Field(default="", max_length=128)


class RegistrationToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kid: str = Field(unique=True, index=True, max_length=32)
    secret_hash: str = Field(max_length=64)
    site_id: int = Field(foreign_key="site.id")
    profile_id: int | None = Field(default=None, foreign_key="profile.id")
    labels: dict[str, str] = _json(dict)
    description: str = Field(default="", max_length=256)
    expires_at: datetime | None = _ts(nullable=True)
    max_uses: int | None = None
    uses: int = 0
    require_approval: bool = False
    allowed_serials: list[str] = _json(list)
    allowed_hardware_ids: list[str] = _json(list)
    revoked_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(nullable=False)
    created_by: str = Field(default="", max_length=128)
    code_hash: str | None = Field(default=None, unique=True, index=True, max_length=64)
    """Hash of the token's QR enrolment code, if it has one (see services/enrolment_codes)."""
    replaces: str | None = Field(default=None, foreign_key="device.id", max_length=40)
    """Replacement mode: the device enrolled with this token takes this device's place
    (name, labels, profile, history) and the old one is decommissioned, no operator step."""


class Device(SQLModel, table=True):
    __table_args__ = (Index("ix_device_created_at_id", "created_at", "id"),)
    """The device list's order: a page is read off the index, not sorted (migration 0012)."""
    id: str = Field(primary_key=True, max_length=40)
    name: str | None = Field(default=None, max_length=128, index=True)
    """What the people at the site call it ("till-3"); a replacement inherits it."""
    state: str = Field(index=True, max_length=32)
    site_id: int = Field(foreign_key="site.id", index=True)
    profile_id: int | None = Field(default=None, foreign_key="profile.id")
    profile_revision: int | None = None
    """A pinned revision of the profile (a restore pins what it brings back); None
    follows the profile's latest revision."""
    token_id: int | None = Field(default=None, foreign_key="registrationtoken.id")
    labels: dict[str, str] = _json(dict)
    key_pin: str = Field(unique=True, index=True, max_length=80)
    """sha256 of the device key's SubjectPublicKeyInfo: the idempotency key of enrolment."""
    public_key_pem: str
    pending_key_pin: str | None = Field(default=None, unique=True, max_length=80)
    """A new key waiting for an operator: the device lost its old one (services/rekey.py)."""
    pending_key_pem: str | None = None
    certificate_pem: str | None = None
    certificate_not_after: datetime | None = _ts(nullable=True)
    credential_generation: int = 1
    serial: str | None = Field(default=None, max_length=256)
    hardware_id: str | None = Field(default=None, max_length=256, index=True)
    inventory: dict[str, Any] = _json(dict)
    status: dict[str, Any] = _json(dict)
    status_digest: str | None = Field(default=None, max_length=64)
    applied_revision: int | None = None
    update_retries: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Operator retries of a revision the device rolled back: it tries that revision again
    when it sees the number grow in its desired state."""
    created_at: datetime = _ts(nullable=False)
    enrolled_at: datetime | None = _ts(nullable=True)
    state_changed_at: datetime = _ts(nullable=False)
    last_seen_at: datetime | None = _ts(nullable=True)
    decided_by: str | None = Field(default=None, max_length=128)
    replaces: str | None = Field(default=None, max_length=40)
    """The device this one replaced (hardware replacement): its history continues here."""
    replaced_by: str | None = Field(default=None, max_length=40)
    """Set on a decommissioned device that another took the place of."""


class UsedAssertion(SQLModel, table=True):
    """A device assertion's ``jti``, kept until the assertion expires, to refuse replays."""

    jti: str = Field(primary_key=True, max_length=200)
    expires_at: datetime = _ts(nullable=False, index=True)


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, index=True, max_length=64)
    role: str = Field(max_length=16)
    site_id: int | None = Field(default=None, foreign_key="site.id")
    disabled: bool = False
    password_hash: str | None = Field(default=None, max_length=256)
    """For the console's login (memory-hard: scrypt); None: API tokens only."""
    created_at: datetime = _ts(nullable=False)


class ConsoleSession(SQLModel, table=True):
    """A console login. The cookie holds a secret; only its hash is stored."""

    id: str = Field(primary_key=True, max_length=64)
    """sha256 of the cookie's secret."""
    user_id: int = Field(foreign_key="user.id", index=True)
    csrf: str = Field(max_length=64)
    """The token every form of this session must carry."""
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False, index=True)
    last_seen_at: datetime = _ts(nullable=False)
    remote_addr: str = Field(default="", max_length=64)


class Claim(SQLModel, table=True):
    """A device with no token asking to be let in (QR claim shown by the device): it
    polls with a secret (stored hashed) while a person checks its confirmation code in
    the console and approves it with a site and profile."""

    id: str = Field(primary_key=True, max_length=40)
    secret_hash: str = Field(max_length=64)
    code: str = Field(max_length=16)
    """The confirmation code shown beside the device's QR code and on the console page."""
    csr_pem: str = Field(sa_column=Column(Text, nullable=False))
    key_pin: str = Field(index=True, max_length=80)
    inventory: dict[str, Any] = _json(dict)
    serial: str | None = Field(default=None, max_length=256)
    hardware_id: str | None = Field(default=None, max_length=256)
    state: str = Field(default="pending", index=True, max_length=16)
    """pending, approved, rejected or expired."""
    site_id: int | None = Field(default=None, foreign_key="site.id")
    profile_id: int | None = Field(default=None, foreign_key="profile.id")
    labels: dict[str, str] = _json(dict)
    device_id: str | None = Field(default=None, foreign_key="device.id", max_length=40)
    """The device the approval enrolled."""
    decided_by: str | None = Field(default=None, max_length=128)
    decided_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False, index=True)
    remote_addr: str = Field(default="", max_length=64)


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kid: str = Field(unique=True, index=True, max_length=32)
    secret_hash: str = Field(max_length=64)
    user_id: int = Field(foreign_key="user.id", index=True)
    created_at: datetime = _ts(nullable=False)


class AuditRecord(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(nullable=False, index=True)
    actor: str = Field(max_length=128)
    action: str = Field(max_length=64, index=True)
    target: str = Field(default="", max_length=256)
    detail: dict[str, Any] = _json(dict)
    remote_addr: str = Field(default="", max_length=64)


class CacheGeneration(SQLModel, table=True):
    """One row, bumped after every committed change that workers' caches depend on; on
    PostgreSQL announced with ``NOTIFY edgefleet_cache`` (see ``controller/pgnotify.py``)."""

    id: int = Field(default=1, primary_key=True)
    generation: int = 0


class CacheListener(SQLModel, table=True):
    """A worker's cache listener and the newest generation it has acted on. A writer's
    ``bump()`` waits until every listener whose session is alive has caught up."""

    id: str = Field(primary_key=True, max_length=128)
    backend_pid: int
    backend_start: datetime = _ts(nullable=False)
    generation: int = 0


class UpdateRecord(SQLModel, table=True):
    """A device's report of one update attempt: its outcome and rollback evidence. One row
    per (device, revision, started_at), so a report sent again after a lost answer is one."""

    __table_args__ = (UniqueConstraint("device_id", "revision", "started_at"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=40)
    revision: int
    outcome: str = Field(max_length=16, index=True)
    slot: str | None = Field(default=None, max_length=1)
    reason: str = Field(default="", max_length=2048)
    started_at: datetime = _ts(nullable=False)
    finished_at: datetime = _ts(nullable=False)
    received_at: datetime = _ts(nullable=False, index=True)
    evidence: dict[str, Any] = _json(dict)


class Result(SQLModel, table=True):
    """One inference result, stored once per key (device, epoch, seq). ``time`` is the
    device's wall clock corrected by its boot's offset where the controller knows it
    (``corrected``); ``id`` is the order of arrival."""

    __table_args__ = (
        UniqueConstraint("device_id", "epoch", "seq"),
        Index("ix_result_device_time", "device_id", "time"),
        Index("ix_result_time", "time"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    device_id: str = Field(max_length=40)
    """No foreign key (migration 0014): its check was most of the database's time per
    stored result; the device is its stream's, whose row keeps the key."""
    epoch: str = Field(max_length=16)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    time: datetime = _ts(nullable=False)
    device_time: float
    corrected: bool = False
    boot_id: str = Field(default="", max_length=64)
    digest: str = Field(default="", max_length=256)
    slot: str | None = Field(default=None, max_length=1)
    revision: int | None = None
    encoding: str = Field(default="json", max_length=8)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = _ts(nullable=False)


class ResultStream(SQLModel, table=True):
    """A device buffer's series (one per buffer epoch): how far the controller holds it."""

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=40)
    epoch: str = Field(primary_key=True, max_length=16)
    acked: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    stored: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    duplicates: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    refused: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    skipped: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class ResultGap(SQLModel, table=True):
    """Sequences a device declared it will never send, and why (evicted, sampled...)."""

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=40)
    epoch: str = Field(max_length=16)
    first: int = Field(sa_column=Column(BigInteger, nullable=False))
    last: int = Field(sa_column=Column(BigInteger, nullable=False))
    reason: str = Field(max_length=32)
    received_at: datetime = _ts(nullable=False)


class ResultConflict(SQLModel, table=True):
    """A record refused because its key was already stored with another payload: kept
    here, not lost, for an operator to look at."""

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=40)
    epoch: str = Field(max_length=16)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    encoding: str = Field(max_length=8)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = _ts(nullable=False)


class DeviceBoot(SQLModel, table=True):
    """When one boot of a device began, by the controller's clock: a result's monotonic
    time plus this is when it happened, whatever the device's wall clock said."""

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=40)
    boot_id: str = Field(primary_key=True, max_length=64)
    started: float
    """Seconds since the epoch (controller clock) at the boot's monotonic zero."""
    seen_at: datetime = _ts(nullable=False)


class Rollout(SQLModel, table=True):
    """A move of a profile's selected devices to ``target_revision`` in waves. Its
    devices and waves are fixed at creation (``rolloutdevice``, ``rolloutwave``)."""

    id: int | None = Field(default=None, primary_key=True)
    profile_id: int = Field(foreign_key="profile.id", index=True)
    target_revision: int
    from_revision: int
    """What the profile's followers got when the rollout was created: a rollback's goal."""
    spec: dict[str, Any] = _json(dict)
    state: str = Field(index=True, max_length=16)
    reason: str = Field(default="", max_length=1024)
    current_wave: int = 1
    waves_total: int
    accepted_failures: int = 0
    """Failures an operator accepted by resuming after a gate failed; gates count beyond."""
    created_by: str = Field(default="", max_length=128)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)
    finished_at: datetime | None = _ts(nullable=True)


class RolloutWave(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("rollout_id", "number"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", index=True)
    number: int
    step: str = Field(max_length=64)
    state: str = Field(default="pending", max_length=16)
    started_at: datetime | None = _ts(nullable=True)
    bake_until: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)
    commits: dict[str, Any] = _json(dict)
    """The fleet repositories' commits that moved this wave's devices."""
    gate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    shadow_until: datetime | None = _ts(nullable=True)
    """While ``shadowing``: when the shadow phase ends and its gates are read."""
    shadow: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """The shadow phase's evidence (``rollouts/shadow.py``): the figures per model, the
    devices and compared inferences, the verdict; kept whichever way it went."""


class RolloutDevice(SQLModel, table=True):
    """One selected device of a rollout: its wave and how its update went."""

    __table_args__ = (
        Index("ix_rolloutdevice_state", "rollout_id", "state", "wave", "offline", "moved_at"),
    )
    rollout_id: int = Field(foreign_key="rollout.id", primary_key=True)
    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=40, index=True)
    wave: int
    state: str = Field(default="pending", max_length=16)
    previous_revision: int | None = None
    """The device's pinned revision before the rollout moved it (None: it followed the
    profile), put back by a rollback."""
    offline: bool = False
    """It was offline when moved: its deadline is the offline one."""
    known_attempt: str | None = Field(default=None, max_length=64)
    """When the device's last attempt at the target started, if it had one before it was
    moved: that old failure is not this rollout's outcome."""
    moved_at: datetime | None = _ts(nullable=True)
    resolved_at: datetime | None = _ts(nullable=True)
    reason: str = Field(default="", max_length=1024)


class RolloutEvent(SQLModel, table=True):
    """Every state change of a rollout, with who and why."""

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", index=True)
    at: datetime = _ts(nullable=False)
    actor: str = Field(max_length=128)
    action: str = Field(max_length=32)
    reason: str = Field(default="", max_length=1024)
    detail: dict[str, Any] = _json(dict)


class EngineLease(SQLModel, table=True):
    """Which worker process drives rollouts, until when: one row per engine."""

    name: str = Field(primary_key=True, max_length=32)
    holder: str = Field(default="", max_length=128)
    expires_at: float = 0.0
    """Unix time (the holder's clock; replicas keep NTP time)."""
    acquired_at: float = 0.0


class DeviceSample(SQLModel, table=True):
    """What the console's charts need of one device's status, once per sample period
    (``status_sample_seconds``): written behind in batches for changed reports and
    heartbeats alike (``controller/status_samples.py``), pruned after
    ``status_sample_retention_days``. ``at`` is the period's start: one row per device and
    period, whichever worker or replica heard it. No foreign keys: derived data, and on
    PostgreSQL a key check would lock the device rows a status report updates."""

    __table_args__ = (
        Index("ix_devicesample_at", "at"),
        Index("ix_devicesample_site_at", "site_id", "at"),
    )
    device_id: str = Field(primary_key=True, max_length=40)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    site_id: int
    state: str = Field(max_length=32)
    healthy: bool
    applied_revision: int | None = None
    p95_ms: float | None = None
    error_rate: float | None = None
    buffer_depth: int = Field(sa_column=Column(BigInteger, nullable=False))
    buffer_drops: int = Field(sa_column=Column(BigInteger, nullable=False))
    """The sum of the buffer's drop counters over every reason, as the device reports them."""


class SampleRollup(SQLModel, table=True):
    """One sample period of a site (``site_id`` 0: the whole fleet) in a few numbers, made
    from ``DeviceSample`` once the period is over, so that a day's fleet chart reads 1,440
    rows rather than one per device and minute."""

    __table_args__ = (Index("ix_samplerollup_at", "at"),)
    site_id: int = Field(primary_key=True)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    reporting: int
    unhealthy: int
    p95_median_ms: float | None = None
    p95_max_ms: float | None = None


class SigningKey(SQLModel, table=True):
    """A rotated signing key (``controller/keyring.py``): the access-token and registry
    token keys made by a rotation, so every worker and replica reads the same keyring.
    The first key of each kind stays in its file; a row with no material stands for it
    once a rotation has moved it on. Material is wrapped (AES-GCM) by a key derived from
    the data directory's ``access-token.key``: the database alone signs nothing."""

    __table_args__ = (UniqueConstraint("purpose", "kid"),)
    id: int | None = Field(default=None, primary_key=True)
    purpose: str = Field(max_length=16, index=True)
    kid: str = Field(max_length=64)
    state: str = Field(max_length=16)
    """``staged`` (trusted, not signing yet), ``active``, ``previous``, ``retired``."""
    material: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    certificate: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = _ts(nullable=False)
    retire_after: datetime | None = _ts(nullable=True)
    """A previous key verifies until then: when everything it signed has expired."""


class DriftWindowRecord(SQLModel, table=True):
    """One closed drift window of one model on one device (``services/drift.py``): the
    counts laid out as its drift reference's histograms, summed across devices when the
    fleet view is read. Keyed like the device's own store, so a window sent again (after
    an outage, or merged by a restarted runner) replaces the first."""

    __tablename__ = "driftwindow"
    __table_args__ = (
        UniqueConstraint("device_id", "model", "reference", "start"),
        Index("ix_driftwindow_start", "start"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    device_id: str = Field(max_length=40, index=True)
    site_id: int
    profile_id: int | None = None
    model: str = Field(max_length=128)
    model_digest: str = Field(max_length=80)
    artifact: str = Field(default="", max_length=512)
    reference: str = Field(max_length=80)
    start: int = Field(sa_column=Column(BigInteger, nullable=False))
    seconds: int
    seen: int = Field(sa_column=Column(BigInteger, nullable=False))
    samples: int = Field(sa_column=Column(BigInteger, nullable=False))
    counts: list[int] = _json(list)
    scores: dict[str, Any] = _json(dict)
    """The device's own worst scores: shown until the reference is read."""
    received_at: datetime = _ts(nullable=False)


class DriftReference(SQLModel, table=True):
    """A drift reference document read from the registry once (by its digest), so the
    controller scores merged windows without asking the registry again."""

    __tablename__ = "driftreference"
    digest: str = Field(primary_key=True, max_length=80)
    document: str = Field(sa_column=Column(Text, nullable=False))
    fetched_at: datetime = _ts(nullable=False)


class ShadowWindowRecord(SQLModel, table=True):
    """One closed agreement window of one shadow comparison on one device
    (``services/shadow.py``): the active model and a candidate on the same sampled live
    inputs. Keyed like the device's own windows, so a window sent again replaces the
    first."""

    __tablename__ = "shadowwindow"
    __table_args__ = (
        UniqueConstraint("device_id", "key", "model", "candidate_digest", "start"),
        Index("ix_shadowwindow_start", "start"),
        Index("ix_shadowwindow_key", "key", "start"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    device_id: str = Field(max_length=40, index=True)
    site_id: int
    profile_id: int | None = None
    key: str = Field(max_length=256)
    """``rollout-<id>`` or ``parent``."""
    model: str = Field(max_length=128)
    active_digest: str = Field(max_length=256)
    candidate_digest: str = Field(max_length=256)
    start: int = Field(sa_column=Column(BigInteger, nullable=False))
    seconds: int
    compared: int = Field(sa_column=Column(BigInteger, nullable=False))
    skipped: int = Field(sa_column=Column(BigInteger, nullable=False))
    errors: int = Field(sa_column=Column(BigInteger, nullable=False))
    top1_total: int = Field(sa_column=Column(BigInteger, nullable=False))
    top1_agree: int = Field(sa_column=Column(BigInteger, nullable=False))
    abs_diff_sum: float
    abs_diff_max: float
    active_p95_ms: float | None = None
    candidate_p95_ms: float | None = None
    received_at: datetime = _ts(nullable=False)
