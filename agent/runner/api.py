"""The runner's local HTTP API, in one place for the server and its clients.

Standard library only: the agent daemon imports this through the supervisor.

    POST /predict   {"inputs": {name: nested lists}}      -> Prediction
    GET  /health                                          -> Health
    GET  /model                                           -> ModelInfo

Errors answer ``{"error": {"code", "message"}}`` (as the controller does, so
:func:`edgefleet.errors.from_response_body` reads them): 400 ``bad_input``,
404, 405, 411, 413, 500 ``inference_failed``.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

PREDICT = "/predict"
HEALTH = "/health"
MODEL = "/model"


class ModelRef(TypedDict):
    name: str
    version: str
    digest: str
    """``sha256:<hex>`` of the model file, as its OCI layer is addressed."""


class TensorSpec(TypedDict):
    name: str
    type: str
    """onnxruntime's element type, e.g. ``tensor(float)``."""
    shape: list[int | str | None]
    """A number per fixed dimension; a name (``"N"``) or None where any size goes."""


class ModelInfo(TypedDict):
    model: ModelRef
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Prediction(TypedDict):
    outputs: dict[str, object]
    """Output name to nested lists."""
    model: ModelRef
    latency_ms: float
    """onnxruntime's own time for this call."""


class ShadowHealth(TypedDict):
    """The candidate a runner runs in shadow (``edgefleet.agent.runner.shadow``)."""

    key: str
    digest: str
    """The candidate's manifest digest, as the shadow plan pins it."""
    running: bool
    """False when the runner refused it (``reason`` says why); the active model serves."""
    reason: str | None
    """Why it does not run, or its last failure while running."""
    compared: int
    skipped: int
    errors: int
    """Rows since the runner started."""


class Health(TypedDict):
    loaded: bool
    model: ModelRef
    uptime_s: float
    calls: int
    """Every ``POST /predict``, answered or refused."""
    errors: int
    """Calls not answered with a prediction (bad input, inference failure)."""
    p95_ms: float | None
    """95th percentile of ``latency_ms`` over the last 1000 answered calls; None before
    the first. The agent reports it for rollouts to gate on."""
    store_errors: int
    """Predictions answered but not recorded in the result store."""
    last_store_error: str | None
    port: int | None
    """The loopback TCP port also served, if any."""
    pid: int
    """The runner's process id: its supervisor checks it answers its own child."""
    shadow: NotRequired[ShadowHealth]
    """The candidate run in shadow; absent when the runner was given none."""
