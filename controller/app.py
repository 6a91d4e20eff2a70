"""The FastAPI app factory. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet import gctune
from edgefleet.controller import openapi, results_retention, sample_rollup
from edgefleet.controller.api import (
    claims,
    device_api,
    devices,
    drift,
    gitops,
    keys,
    registry,
    results,
    rollouts,
    sites,
    tokens,
    updates,
    users,
)
from edgefleet.controller.claimwake import ClaimWaits
from edgefleet.controller.console import routes as console
from edgefleet.controller.db import storage_error
from edgefleet.controller.fastpath import DesiredFastPath
from edgefleet.controller.guard import Guard
from edgefleet.controller.ratelimit import RateLimits
from edgefleet.controller.rollouts.driver import Driver
from edgefleet.controller.runtime import Runtime
from edgefleet.controller.services import drift as drift_service
from edgefleet.controller.settings import Settings, load_settings
from edgefleet.errors import ApiError, BadRequest, NotFound
from edgefleet.wire import API_PREFIX

log = logging.getLogger("edgefleet.controller")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app over a prepared data directory (see ``bootstrap.prepare``)."""
    rt = runtime or Runtime(settings or load_settings())
    driver = Driver(rt)
    claim_waits = ClaimWaits(rt.engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Database work runs in threads; a few are enough to keep the database busy,
        # and more only trade throughput for lock and GIL contention.
        to_thread.current_default_thread_limiter().total_tokens = rt.settings.effective_db_threads
        task = asyncio.create_task(_flush_last_seen(rt))
        history = asyncio.create_task(sample_rollup.run(rt))  # status history upkeep
        retention = asyncio.create_task(results_retention.run(rt))  # old results deleted
        drift_upkeep = asyncio.create_task(drift_service.run_retention(rt))  # old windows
        gc_pauses = asyncio.create_task(_record_gc_pauses(rt, _app))
        rt.epoch.start()  # this worker's cache listener (PostgreSQL: LISTEN/NOTIFY)
        rt.gitops.start()  # the fleet repositories, brought up to date in the background
        driver.start()  # drives rollouts while this process holds the lease
        try:
            yield
        finally:
            await run_in_threadpool(driver.stop)
            await run_in_threadpool(claim_waits.stop)
            await run_in_threadpool(rt.gitops.stop)
            await run_in_threadpool(rt.epoch.stop)
            for background in (task, history, retention, drift_upkeep, gc_pauses):
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await run_in_threadpool(rt.last_seen.flush)
            await run_in_threadpool(rt.status_samples.flush)

    app = FastAPI(title="Edgefleet controller", version="1", lifespan=lifespan)
    openapi.install(app)  # errors documented as they are answered: {"error": {...}}
    app.state.rt = rt
    app.state.rollout_driver = driver
    app.state.claim_waits = claim_waits
    app.state.rate_limits = RateLimits.from_settings(rt.settings, rt.metrics)
    for module in (
        device_api,
        devices,
        tokens,
        sites,
        users,
        gitops,
        keys,
        registry,
        updates,
        results,
        rollouts,
        claims,
        drift,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    console.mount(app)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    for failure in (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError):
        app.add_exception_handler(failure, _storage_error)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        try:
            with rt.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse(
                {"status": "unavailable", "reason": f"database: {exc.__class__.__name__}"},
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(rt.metrics.render(), media_type=rt.metrics.content_type)

    app.add_middleware(DesiredFastPath, rt=rt)
    app.add_middleware(  # added last: outermost
        Guard,
        metrics=rt.metrics,
        max_body=rt.settings.max_body_bytes,
        max_inflight=rt.settings.max_inflight_requests,
        max_result_body=rt.settings.max_result_body_bytes,
        retry_after_max=rt.settings.shed_retry_after_max_seconds,
    )
    return app


def app_from_environment() -> FastAPI:
    """Entry for uvicorn worker processes (``factory=True``): settings from env and file.
    The garbage collector is tuned here, in served workers only (see ``gctune``)."""
    app = create_app(load_settings())
    app.state.gc_pauses = gctune.Pauses()  # the start-up collection is the first
    gctune.tune()
    return app


async def _record_gc_pauses(rt: Runtime, app: FastAPI) -> None:
    """Served workers (``app_from_environment``) note each collection; this moves them
    into ``/metrics`` once a second, outside the collector."""
    pauses: gctune.Pauses | None = getattr(app.state, "gc_pauses", None)
    if pauses is None:
        return
    while True:
        await asyncio.sleep(1)
        for generation, seconds in pauses.drain():
            rt.metrics.gc_pause.labels(str(generation)).observe(seconds)


async def _flush_last_seen(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(rt.settings.last_seen_flush_seconds)
        try:
            await run_in_threadpool(rt.last_seen.flush)
        except Exception:
            log.exception("writing last-seen times failed; will retry")
        try:
            await run_in_threadpool(rt.status_samples.flush)
        except Exception:
            log.exception("writing status samples failed; will retry")


async def _api_error(request: Request, exc: ApiError) -> Response:
    if console.is_console(request):
        return console.error_page(request, exc)
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(exc.retry_after))
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _storage_error(request: Request, exc: Exception) -> Response:
    """The database down or the disk full: a 503 or 507 an operator and a device can act
    on, instead of a 500 and a traceback; anything else is still a 500."""
    error = storage_error(exc, request.app.state.rt.settings.data_dir)
    if error is None:
        raise exc
    # A fleet meets an outage all at once: one line per kind every few seconds, not
    # one per request.
    now = time.monotonic()
    if now >= _STORAGE_LOGGED.get(error.code, 0.0):
        _STORAGE_LOGGED[error.code] = now + STORAGE_LOG_EVERY_S
        log.warning(
            "%s %s: %s (more like it are not logged for %g s)",
            request.method,
            request.url.path,
            error.message,
            STORAGE_LOG_EVERY_S,
        )
    return await _api_error(request, error)


STORAGE_LOG_EVERY_S = 10.0
_STORAGE_LOGGED: dict[str, float] = {}
"""When each kind of storage error (its code) may be logged again, in monotonic time."""


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Unknown paths and wrong methods answer in the same shape as every other error."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    if console.is_console(request):
        error = NotFound if exc.status_code == 404 else BadRequest
        return console.error_page(request, error(str(exc.detail), code=code))
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        problems.append(f"{where}: {err['msg']}")
    if console.is_console(request):
        return console.error_page(request, BadRequest("; ".join(problems)))
    return JSONResponse(
        {"error": {"code": "invalid_request", "message": "; ".join(problems)}},
        status_code=422,
    )
