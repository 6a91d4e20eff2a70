"""Wire models of the device API: the JSON that agent and controller exchange.

Both sides import these, so a field exists once. They already carry what later
parts of the update path report (slots, update outcome, buffer depth and drops,
inference p95 and error rate), so the shape does not change when those parts
start filling them in. Unknown fields are refused on requests, so a typo in a
client is an error rather than silently lost data.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

API_PREFIX = "/api/v1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300
CLOCK_TOLERANCE_S = 2 * 3600

Short = Annotated[str, StringConstraints(max_length=256)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceState(StrEnum):
    """Controller-side lifecycle; ``new`` and ``enrolling`` live only on the device."""

    awaiting_approval = "awaiting_approval"
    enrolled = "enrolled"
    ready = "ready"
    updating = "updating"
    degraded = "degraded"
    rejected = "rejected"
    decommissioned = "decommissioned"


class Inventory(Strict):
    """What a device says about itself at enrolment and when it changes."""

    serial: Short | None = None
    hardware_id: Short | None = None
    hostname: Short | None = None
    arch: Short | None = None
    os: Short | None = None
    kernel: Short | None = None
    agent_version: Short | None = None
    cpu_count: int | None = Field(default=None, ge=0, le=4096)
    memory_mb: int | None = Field(default=None, ge=0)
    accelerators: list[Short] = Field(default_factory=list, max_length=16)
    mode: Literal["direct", "k3s"] = "direct"
    extra: dict[Short, Short] = Field(default_factory=dict, max_length=32)


class Registration(Strict):
    """The registration file flashed into a device image (YAML on disk)."""

    controller_url: Short
    controller_id: Name
    root_pins: list[Short] = Field(min_length=1, max_length=8)
    token: Short | None = None


class EnrolRequest(Strict):
    token: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    csr: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    inventory: Inventory = Field(default_factory=Inventory)


class EnrolResponse(BaseModel):
    device_id: str
    state: DeviceState
    certificate_chain: str | None = None
    """PEM: the device certificate, then its intermediate."""
    trust_bundle: list[str] = Field(default_factory=list)
    """PEM roots the device should trust (current and next)."""
    profile: str | None = None
    interval_seconds: int
    retry_after_seconds: int | None = None
    """While awaiting approval: when to ask again."""
    message: str = ""
    controller_id: str | None = None
    """The audience of this device's assertions. A QR code does not carry it (it must stay
    small), so an agent enrolled with one learns it here, over the pinned connection."""


class RenewRequest(Strict):
    """A new key for a known device: the CSR, and an assertion signed by the key on record
    whose ``csr_sha256`` claim is the SHA-256 (hex) of that CSR's PEM text. Also how a
    device whose certificate expired while offline re-enrols."""

    csr: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    proof: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class TokenRequest(Strict):
    """RFC 7523 client authentication, sent as JSON."""

    grant_type: Literal["client_credentials"] = "client_credentials"
    client_assertion_type: Literal["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"] = (
        ASSERTION_TYPE
    )
    client_assertion: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class ModelRef(BaseModel):
    name: str
    reference: str
    """``registry/repository[:tag]@sha256:…``: always pinned by digest."""
    digest: str
    origin: str = ""
    """The registry's base URL (``https://host[:port]``, or ``http://`` where the
    controller's ``registry_insecure`` says so); devices try their mirrors first."""


class DesiredState(BaseModel):
    """What a device should run; its ETag is a digest of this object."""

    device_id: str
    profile: str | None = None
    revision: int = 0
    """The profile revision; 0 while the device has no profile."""
    models: list[ModelRef] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    interval_seconds: int
    trust_bundle: list[str] = Field(default_factory=list)


class SlotState(StrEnum):
    empty = "empty"
    good = "good"
    bad = "bad"
    trying = "trying"


class SlotStatus(Strict):
    name: Literal["A", "B"]
    state: SlotState = SlotState.empty
    revision: int | None = None
    models: list[Short] = Field(default_factory=list, max_length=64)
    active: bool = False


class UpdateResult(StrEnum):
    in_progress = "in_progress"
    success = "success"
    rolled_back = "rolled_back"
    failed = "failed"


class UpdateOutcome(Strict):
    revision: int
    result: UpdateResult
    reason: Annotated[str, StringConstraints(max_length=2048)] = ""
    at: datetime | None = None


class CheckResult(Strict):
    name: Short
    ok: bool
    detail: Annotated[str, StringConstraints(max_length=2048)] = ""


class Health(Strict):
    ok: bool = True
    checks: list[CheckResult] = Field(default_factory=list, max_length=64)


class BufferStats(Strict):
    depth: int = Field(default=0, ge=0)
    bytes: int = Field(default=0, ge=0)
    oldest_age_seconds: float | None = Field(default=None, ge=0)
    drops: dict[Short, int] = Field(default_factory=dict, max_length=16)


class InferenceStats(Strict):
    count: int = Field(default=0, ge=0)
    p95_ms: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)


class StatusReport(Strict):
    """Sent when something changed and as a heartbeat on the interval."""

    applied_revision: int | None = None
    updating: bool = False
    slots: list[SlotStatus] = Field(default_factory=list, max_length=2)
    update: UpdateOutcome | None = None
    health: Health = Field(default_factory=Health)
    buffer: BufferStats = Field(default_factory=BufferStats)
    inference: InferenceStats = Field(default_factory=InferenceStats)
    inventory: Inventory | None = None


class StatusAck(BaseModel):
    state: DeviceState
    desired_etag: str
    """Lets the device notice a new desired state without waiting for its next poll."""
    interval_seconds: int


class ErrorBody(BaseModel):
    class Detail(BaseModel):
        code: str
        message: str

    error: Detail


class RegistryToken(BaseModel):
    """A bearer token for the OCI registry, in the shape its clients expect (distribution's
    token authentication); devices and operators get the same."""

    token: str
    access_token: str
    """The same token again: OAuth 2 clients read this name, docker clients ``token``."""
    expires_in: int
    issued_at: datetime
