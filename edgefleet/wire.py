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

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

API_PREFIX = "/api/v1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300
CLOCK_TOLERANCE_S = 2 * 3600

Short = Annotated[str, StringConstraints(max_length=256)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MAX_TEXT_CHARS = 2048
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
INT64_MAX = 2**63 - 1
"""The largest sequence number a database column holds: a device's sequence past it is
refused as malformed (400), not left to fail the insert (500)."""
REVISION_MAX = 2**31 - 1
"""Profile revisions are stored as (32-bit) integers."""


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
    node: Short | None = None
    """K3s mode: the Kubernetes node the agent's pod runs on (the chart passes
    ``spec.nodeName``); the device's OS and K3s upgrade Plans select this node."""
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


CLAIM_SCHEME = "Claim"
"""``Authorization: Claim <secret>``: how a device polls its claim (no operator token)."""


class ClaimState(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    expired = "expired"


class ClaimRequest(Strict):
    """``POST /claims``: a device with no token asks to be let in (QR claim). Serial and
    hardware id travel in the inventory, as at enrolment."""

    csr: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    inventory: Inventory = Field(default_factory=Inventory)


class ClaimCreated(BaseModel):
    """The claim, for the device alone: ``secret`` is shown to no person and stored by the
    controller only as a hash; ``code`` and ``url`` are what the device shows."""

    id: str
    secret: str
    code: str
    """The confirmation code, shown beside the QR code and on the console page."""
    url: str
    """The claim's console page: what the QR code encodes."""
    expires_at: AwareDatetime
    poll_seconds: int
    """How long one poll may be held open by the controller (long polling)."""


class ClaimStatus(BaseModel):
    """``GET /claims/{id}`` with the claim's secret. Once approved, ``enrolment`` is exactly
    what ``POST /enrol`` answers, so the agent goes on as if it had enrolled with a token."""

    id: str
    state: ClaimState
    expires_at: AwareDatetime
    message: str = ""
    enrolment: EnrolResponse | None = None


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


Timeout = Annotated[float | None, Field(default=None, gt=0)]
"""A check's own time limit; None leaves it to the agent's default for its type."""


class ModelLoadCheck(BaseModel):
    """Every model of the revision loads in the runner."""

    type: Literal["model_load"] = "model_load"
    timeout_seconds: Timeout = None


class ProbeCheck(BaseModel):
    """Every model answers its golden probe within the probe's tolerance."""

    type: Literal["probe"] = "probe"
    timeout_seconds: Timeout = None


class LatencyCheck(BaseModel):
    """The p95 of ``samples`` inferences is at most ``p95_ms``."""

    type: Literal["latency"] = "latency"
    p95_ms: float = Field(gt=0)
    samples: int = Field(default=50, ge=1, le=1000)
    timeout_seconds: Timeout = None


class HttpCheck(BaseModel):
    """A GET of ``url`` answers ``expect_status``."""

    type: Literal["http"] = "http"
    url: str
    expect_status: int = Field(default=200, ge=100, le=599)
    timeout_seconds: Timeout = None


class ExecCheck(BaseModel):
    """``command`` (an argv, no shell) exits 0. Only an admin may put one in a profile,
    and the controller audits it: it runs on the device as the agent."""

    type: Literal["exec"] = "exec"
    command: list[str] = Field(min_length=1)
    timeout_seconds: Timeout = None


HealthCheck = Annotated[
    ModelLoadCheck | ProbeCheck | LatencyCheck | HttpCheck | ExecCheck,
    Field(discriminator="type"),
]


class HealthPolicy(BaseModel):
    """The profile's ``policies.health_checks``, ``health_deadline_seconds`` and
    ``max_attempts``; what the profile leaves out is None here (the agent's default)."""

    checks: list[HealthCheck] = Field(default_factory=list)
    deadline_seconds: float | None = None
    max_attempts: int | None = None

    @classmethod
    def from_policies(cls, policies: dict[str, Any]) -> HealthPolicy | None:
        """From a validated profile's ``policies``; None when it sets none of the three."""
        keys = ("health_checks", "health_deadline_seconds", "max_attempts")
        if not any(k in policies for k in keys):
            return None
        return cls(
            checks=policies.get("health_checks", []),
            deadline_seconds=policies.get("health_deadline_seconds"),
            max_attempts=policies.get("max_attempts"),
        )


class ResultPolicy(BaseModel):
    """The profile's ``results``: how much the device's offline buffer keeps."""

    rate_per_second: float = Field(default=2.0, gt=0)
    """Results the site expects to produce; with the mean record size it says how many
    hours ``max_bytes`` holds (``capacity_hours`` in the status)."""
    retention_hours: float = Field(default=48.0, ge=1)
    """How long a site may be offline without losing results: a warning is shown when
    ``max_bytes`` holds less at ``rate_per_second``."""
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    policy: Literal["drop_oldest", "drop_newest", "sample"] = "drop_oldest"
    """What a full buffer gives up: the oldest results, new ones, or every other of the
    oldest (keeping the whole time span, thinner)."""


class SigningKey(BaseModel):
    """A public key a profile trusts to sign models: ``id`` names it in refusals."""

    id: str
    public_key: str
    """PEM SubjectPublicKeyInfo, Ed25519 or ECDSA P-256 (checked when the profile is applied)."""


class ModelSignaturePolicy(BaseModel):
    """The profile's ``model_signatures``: with ``required``, the agent installs a model
    only when one of ``keys`` signed its manifest digest (``edgefleet models sign``)."""

    required: bool = True
    keys: list[SigningKey] = Field(default_factory=list)

    @classmethod
    def from_profile(cls, spec: dict[str, Any]) -> ModelSignaturePolicy | None:
        """From a validated profile (or the K3s ConfigMap's copy); None when it has none."""
        section = spec.get("model_signatures")
        return cls.model_validate(section) if section else None


class DriftPolicy(BaseModel):
    """The profile's ``drift``: how devices sketch live traffic against each model's
    drift reference, and the PSI levels the controller's fleet view calls
    investigate and act (below ``investigate``: no action)."""

    enabled: bool = True
    window_seconds: int = Field(default=3600, ge=1, le=86400)
    """Windows are aligned on the wall clock, so every device's windows line up."""
    sample_rate: float = Field(default=1.0, gt=0, le=1)
    investigate: float = Field(default=0.1, gt=0)
    act: float = Field(default=0.25, gt=0)

    @classmethod
    def from_profile(cls, spec: dict[str, Any]) -> DriftPolicy | None:
        """From a validated profile; None when it has no ``drift`` section."""
        section = spec.get("drift")
        if section is None:
            return None
        thresholds = section.get("thresholds", {})
        return cls(
            **{k: v for k, v in section.items() if k != "thresholds"},
            **thresholds,
        )


class ShadowModel(BaseModel):
    """A candidate the device runs beside one of its active models: it sees the same
    live inputs, its answers go nowhere, and the two are compared."""

    key: str
    """What asked for the comparison, echoed in every window: ``rollout-<id>`` for a
    rollout's shadow wave, ``parent`` for a quantized model against its full-precision
    parent (the profile's ``parent``)."""
    active: str
    """The name of the active model (``models[].name``) whose inputs it shares."""
    model: ModelRef
    """The candidate, pinned by digest (its name is the active model's)."""


class ShadowPlan(BaseModel):
    """The candidates to run in shadow: at most one per active model."""

    models: list[ShadowModel] = Field(default_factory=list)
    sample_rate: float = Field(default=1.0, gt=0, le=1)
    """The share of live inferences also run on the candidate."""
    window_seconds: int = Field(default=300, ge=1, le=86400)
    """Agreement windows are aligned on the wall clock, as drift windows are."""


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
    health: HealthPolicy | None = None
    """None when the profile sets no health policy: the agent uses its defaults."""
    results: ResultPolicy = Field(default_factory=ResultPolicy)
    model_signatures: ModelSignaturePolicy | None = None
    """None when the profile asks for no signatures; then left out of the body (below)."""
    update_retries: int = 0
    """Grows with each operator retry (``edgefleet devices retry-update``): the device
    then tries ``revision`` again even where a slot failed it."""
    drift: DriftPolicy | None = None
    """None when the profile has no ``drift`` section; then left out of the body, so
    the ETag of a device without drift monitoring is what it was before the field."""
    shadow: ShadowPlan | None = None
    """None when nothing runs in shadow; then left out of the body."""

    def body(self) -> dict[str, Any]:
        """The document the controller serves, as JSON types. Sections added after the
        first release are left out when absent: a controller upgrade must not change every
        device's ETag (each would fetch its whole desired state again at once)."""
        data = self.model_dump(mode="json")
        for added in ("model_signatures", "drift", "shadow"):
            if data.get(added, ...) is None:
                del data[added]
        return data


SlotName = Literal["A", "B"]


class SlotState(StrEnum):
    empty = "empty"
    good = "good"
    bad = "bad"
    trying = "trying"


class SlotStatus(Strict):
    """One A/B slot as the device's boot-control record has it."""

    name: SlotName
    state: SlotState = SlotState.empty
    revision: int | None = None
    reason: Text = ""
    """Why a slot is ``bad`` (the failed check), so an operator sees it without evidence."""


class UpdateResult(StrEnum):
    committed = "committed"
    rolled_back = "rolled_back"
    failed = "failed"
    """Never reached the health checks (staging, writing, verifying the slot)."""


class UpdateOutcome(Strict):
    """How one update attempt ended. (revision, started_at) names the attempt."""

    revision: int = Field(ge=0, le=REVISION_MAX)
    outcome: UpdateResult
    slot: SlotName | None = None
    """The slot the revision was written to and tried in."""
    reason: Text = ""
    started_at: AwareDatetime
    finished_at: AwareDatetime


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
    cap_bytes: int = Field(default=0, ge=0)
    """The buffer's size cap (the profile's ``results.max_bytes``)."""
    capacity_hours: float | None = Field(default=None, ge=0)
    """How long the cap holds results at the profile's rate and the records' mean size."""


class InferenceStats(Strict):
    count: int = Field(default=0, ge=0)
    p95_ms: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)


class GitopsStatus(Strict):
    """K3s mode: the site's applier of the device's folder, as the agent reads it."""

    applier: Literal["flux", "argocd"]
    synced: bool = False
    """Flux: Ready and the last applied revision is the last attempted one; Argo CD:
    sync status ``Synced``."""
    healthy: bool = False
    """Flux: the Healthy condition (else Ready); Argo CD: health status ``Healthy``."""
    revision: Short = ""
    """The Git commit the applier last applied."""
    message: Text = ""


MAX_DRIFT_COUNTS = 4096
"""Counts in one drift window: a reference's histograms (32 features of at most 11 bins,
21 class bins, 11 confidence bins per output) stay far below it."""
MAX_DRIFT_WINDOWS = 16
"""Drift windows in one status report: the latest of each model, then the backlog of
windows closed while offline, sent 16 at a time until it is drained."""
DriftScore = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class DriftWindow(Strict):
    """One closed window of one model's drift sketch (``edgefleet.drift.sketch``)."""

    model: Name
    digest: Short
    """The model file's digest (the runner's)."""
    artifact: Short = ""
    """The model's pinned reference (``registry/repo@sha256:…``): where the controller
    reads the drift reference from, once per reference digest."""
    reference: Short
    """``sha256:<hex>`` of the drift reference the counts are laid out by."""
    start: int = Field(ge=0, le=INT64_MAX)
    seconds: int = Field(ge=1, le=86400)
    seen: int = Field(ge=0, le=INT64_MAX)
    samples: int = Field(ge=0, le=INT64_MAX)
    counts: list[Annotated[int, Field(ge=0, le=INT64_MAX)]] = Field(max_length=MAX_DRIFT_COUNTS)
    scores: dict[Short, dict[Short, DriftScore | Short]] = Field(
        default_factory=dict, max_length=64
    )
    """The device's own worst scores for a glance; the controller scores merged counts."""


MAX_SHADOW_WINDOWS = 16
"""Agreement windows in one status report, as for drift windows."""
Ratio = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class LatencySummary(Strict):
    """One model's inference time over a window's compared inferences, in ms."""

    p50_ms: Ratio | None = None
    p95_ms: Ratio | None = None


class ShadowWindow(Strict):
    """One closed window of one shadow comparison: the active model and its candidate
    on the same sampled live inputs."""

    key: Short
    """The plan's ``key`` (``rollout-<id>``, ``parent``)."""
    model: Name
    """The active model's name."""
    active_digest: Short
    """The active model's manifest digest (``sha256:<hex>``, as its ``ModelRef.digest``)."""
    candidate_digest: Short
    """The candidate's manifest digest, as the plan's ``ShadowModel.model.digest``."""
    start: int = Field(ge=0, le=INT64_MAX)
    seconds: int = Field(ge=1, le=86400)
    compared: int = Field(ge=0, le=INT64_MAX)
    """Inferences both models answered, counted in rows: a call of a batch of 100 rows
    counts 100 (a call's rows are its first output's leading axis when that output has
    two axes or more or holds one label per row, else 1). ``skipped``, ``errors`` and
    ``top1_*`` count rows too; the latencies are per call."""
    skipped: int = Field(default=0, ge=0, le=INT64_MAX)
    """Sampled inferences the candidate did not run (its queue was full)."""
    errors: int = Field(default=0, ge=0, le=INT64_MAX)
    """Sampled inferences the candidate failed, or whose outputs could not be compared
    (another shape, values that are not finite)."""
    top1_total: int = Field(default=0, ge=0, le=INT64_MAX)
    """Compared inferences whose first output reads as class scores (its last axis has
    at least two values) or as labels (integers or strings, one per row): top-1 is
    counted over these only."""
    top1_agree: int = Field(default=0, ge=0, le=INT64_MAX)
    """Of those, the ones whose top-1 class was the same for both models."""
    abs_diff_sum: Ratio = 0.0
    """Sum over compared inferences of the mean absolute difference of their outputs
    (every numeric output but labels, element by element): divided by ``compared`` it is
    the window's mean absolute difference. Each row of a call adds the call's mean."""
    abs_diff_max: Ratio = 0.0
    """The largest absolute difference of any output value in the window."""
    active_latency: LatencySummary = Field(default_factory=LatencySummary)
    candidate_latency: LatencySummary = Field(default_factory=LatencySummary)

    @model_validator(mode="after")
    def _consistent(self) -> ShadowWindow:
        if self.top1_agree > self.top1_total or self.top1_total > self.compared:
            raise ValueError("top1_agree <= top1_total <= compared must hold")
        return self


class StatusReport(Strict):
    """Sent when something changed and as a heartbeat on the interval."""

    applied_revision: int | None = None
    updating: bool = False
    slots: list[SlotStatus] = Field(default_factory=list, max_length=2)
    active_slot: SlotName | None = None
    last_update: UpdateOutcome | None = None
    health: Health = Field(default_factory=Health)
    buffer: BufferStats = Field(default_factory=BufferStats)
    inference: InferenceStats = Field(default_factory=InferenceStats)
    inventory: Inventory | None = None
    gitops: GitopsStatus | None = None
    """K3s mode only: Flux ``Kustomization`` / Argo CD ``Application`` sync and health."""
    drift: list[DriftWindow] = Field(default_factory=list, max_length=MAX_DRIFT_WINDOWS)
    """Closed drift windows: the latest of each model, and any not yet delivered."""
    shadow: list[ShadowWindow] = Field(default_factory=list, max_length=MAX_SHADOW_WINDOWS)
    """Closed shadow-comparison windows not yet delivered, oldest first."""


MAX_EVIDENCE_BYTES = 48 * 1024
"""The largest evidence object, as compact JSON. Per-field caps bound each part; this
bounds the sum, so a report with its outcome fits the controller's request body limit
(``max_body_bytes``, 64 KiB by default) and a device cannot fill the database."""

MAX_OUTPUT_CHARS = 8192
MAX_LOG_LINE_CHARS = 1024
MAX_LOG_LINES = 500
MAX_LATENCY_SAMPLES = 1000
MAX_PROBE_VALUES = 64
Output = Annotated[str, StringConstraints(max_length=MAX_OUTPUT_CHARS)]
LogLine = Annotated[str, StringConstraints(max_length=MAX_LOG_LINE_CHARS)]


class FailedCheck(Strict):
    name: Short
    """The check as the profile names it (``probe``, ``latency``, ``http``, ``exec``...)."""
    detail: Text = ""
    """Why it failed, in a line."""
    output: Output = ""
    """What it said: an exec check's output, an HTTP answer's head, a runner's error."""


class ProbeMismatch(Strict):
    """One output of the golden probe that disagreed (the first values of each side)."""

    model: Short
    output: Short
    expected: list[float | None] = Field(default_factory=list, max_length=MAX_PROBE_VALUES)
    actual: list[float | None] = Field(default_factory=list, max_length=MAX_PROBE_VALUES)
    """None where the model gave NaN or infinity (JSON carries neither)."""
    detail: Text = ""


class LatencySamples(Strict):
    """One model's latency check: every sample it took, and the p95 budget."""

    model: Short
    samples_ms: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=list, max_length=MAX_LATENCY_SAMPLES
    )
    budget_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class UpdateEvidence(Strict):
    """Why an update attempt ended as it did, kept on the device and uploaded."""

    failed_checks: list[FailedCheck] = Field(default_factory=list, max_length=32)
    probe: list[ProbeMismatch] = Field(default_factory=list, max_length=16)
    latency: list[LatencySamples] = Field(default_factory=list, max_length=16)
    log: list[LogLine] = Field(default_factory=list, max_length=MAX_LOG_LINES)
    """The agent's log lines of the attempt, oldest first."""

    @model_validator(mode="after")
    def _bounded(self) -> UpdateEvidence:
        size = len(self.model_dump_json())
        if size > MAX_EVIDENCE_BYTES:
            raise ValueError(
                f"the evidence is {size} bytes as JSON; at most {MAX_EVIDENCE_BYTES} are kept"
            )
        return self


class UpdateReport(Strict):
    """One update attempt, uploaded with ``POST /devices/{id}/updates``. The controller
    keeps one record per (device, revision, started_at): a re-upload stores nothing new."""

    outcome: UpdateOutcome
    evidence: UpdateEvidence = Field(default_factory=UpdateEvidence)


class UpdateAck(BaseModel):
    id: int
    """The controller's record of the report (``edgefleet updates show ID``)."""
    created: bool
    """False when the controller already had this report (a re-upload)."""


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


MAX_BATCH_RECORDS = 5000
MAX_BATCH_BYTES = 4 * 1024 * 1024
"""A result batch's size limit as JSON, after gzip is undone (the controller refuses more)."""
Epoch = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
BootId = Annotated[str, StringConstraints(max_length=64)]


class PayloadEncoding(StrEnum):
    json = "json"
    """``payload`` is the result as compact JSON text, stored and returned as sent."""
    base64 = "base64"
    """``payload`` is a binary result, base64-encoded."""


class ResultRecord(Strict):
    """One inference result as the device's buffer holds it; (device, epoch, seq) is its key."""

    seq: int = Field(ge=1, le=INT64_MAX)
    wall: float = Field(allow_inf_nan=False)
    """The device's wall clock when the result was stored (seconds since the epoch)."""
    mono: float = Field(ge=0, allow_inf_nan=False)
    """Seconds since ``boot_id``'s boot: the controller corrects ``wall`` with it."""
    boot_id: BootId = ""
    digest: Short = ""
    slot: SlotName | None = None
    revision: int | None = Field(default=None, ge=0, le=REVISION_MAX)
    encoding: PayloadEncoding = PayloadEncoding.json
    payload: str


class SkippedRange(Strict):
    """Sequences the device will never send (evicted, sampled, or deleted after an ack
    the controller no longer has): the controller acks past them."""

    first: int = Field(ge=1, le=INT64_MAX)
    last: int = Field(ge=1, le=INT64_MAX)
    reason: Annotated[str, StringConstraints(min_length=1, max_length=32)]

    @model_validator(mode="after")
    def _ordered(self) -> SkippedRange:
        if self.last < self.first:
            raise ValueError(f"skipped range {self.first}-{self.last} ends before it starts")
        return self


class ResultBatch(Strict):
    """``POST /devices/{id}/results`` (gzip allowed): records in sequence order, and the
    ranges skipped before and between them, so together they cover every sequence from
    their first to their last."""

    epoch: Epoch
    boot_id: BootId = ""
    wall: float = Field(allow_inf_nan=False)
    mono: float = Field(ge=0, allow_inf_nan=False)
    """The device's clocks as it sent the batch: the controller learns the boot's offset."""
    records: list[ResultRecord] = Field(default_factory=list, max_length=MAX_BATCH_RECORDS)
    skipped: list[SkippedRange] = Field(default_factory=list, max_length=1000)


class ResultAck(BaseModel):
    """The remote ack: the device may delete every record of ``epoch`` up to ``acked``."""

    epoch: str
    acked: int
    """The highest sequence up to which the controller holds (or was told to skip) all."""
    stored: int = 0
    duplicates: int = 0
    """Records the controller already held with the same payload (a resend)."""
    refused: list[int] = Field(default_factory=list)
    """Sequences it already held with another payload: kept aside, counted, acked."""
