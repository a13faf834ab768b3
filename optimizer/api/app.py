"""The optimizer's HTTP application: routers, error mapping, start-up and retention."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.concurrency import run_in_threadpool

from optimizer.api import (
    audit,
    cluster,
    forecasts,
    gangs,
    gpus,
    health,
    nodes,
    recommendations,
    reports,
    webhook,
    whatif,
)
from optimizer.api.cost import CostCollector
from optimizer.api.docs import serve_docs
from optimizer.api.limits import BodyLimit, TokenBuckets
from optimizer.api.state import ApiMetrics, AppState
from optimizer.auth import Authenticator
from optimizer.ingest import IngestQueue
from optimizer.settings import OptimizerSettings
from optimizer.store import migrate
from optimizer.store.engine import make_engine, make_session_factory
from optimizer.store.reports import prune
from optimizer.store.rollups import fold_closed
from shared.report import NodeReport
from shared.version import __version__

log = structlog.get_logger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    settings: OptimizerSettings,
    *,
    authenticator: Authenticator | None,
    engine: Engine | None = None,
    clock: Callable[[], datetime] = _utc_now,
    migrate_on_start: bool | None = None,
    prune_in_background: bool = True,
) -> FastAPI:
    """Build the app.

    Args:
        settings: validated settings.
        authenticator: None disables authentication (``auth=none``, development only).
        engine: defaults to one built from ``settings.database_url``.
        clock: UTC now, injectable.
        migrate_on_start: run migrations at start; default: only for SQLite.
        prune_in_background: apply retention every ``prune_interval_s`` while serving.
    """
    engine = engine or make_engine(settings.database_url)
    registry = CollectorRegistry()
    sessions = make_session_factory(engine)
    metrics = ApiMetrics(registry)

    def observe(seconds_per_report: float, reports: int) -> None:
        metrics.ingest_seconds.observe(seconds_per_report)
        metrics.batch_size.observe(reports)

    state = AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        authenticator=authenticator,
        clock=clock,
        registry=registry,
        metrics=metrics,
        report_buckets=TokenBuckets(
            rate_per_s=settings.report_rate_per_node, burst=settings.report_burst_per_node
        )
        if settings.report_rate_per_node > 0
        else None,
        ingest=IngestQueue(
            sessions=sessions,
            clock=clock,
            observe=observe,
            pool_of=settings.pool_of,
            move_after=timedelta(seconds=settings.gpu_move_after_s),
            max_queue_bytes=settings.ingest_queue_bytes,
            answer_within_s=settings.ingest_answer_s,
        ),
    )
    registry.register(health.ClusterCollector(state))
    registry.register(forecasts.ForecastCollector(state))
    registry.register(recommendations.RecommendationCollector(state))
    registry.register(CostCollector(state))
    if migrate_on_start is None:
        migrate_on_start = engine.dialect.name == "sqlite"

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if migrate_on_start:
            await run_in_threadpool(migrate.upgrade, engine)
        state.ingest.start()
        tasks = [
            asyncio.create_task(_every(settings.rollup_fold_interval_s, run_fold, state)),
        ]
        if prune_in_background:
            tasks.append(asyncio.create_task(_every(settings.prune_interval_s, run_prune, state)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await run_in_threadpool(state.ingest.stop)

    app = FastAPI(
        title="Stowage optimizer",
        version=__version__,
        description="Report ingest, cluster state and history for GPU scheduling.",
        lifespan=lifespan,
        docs_url=None,  # both served from the package by optimizer.api.docs (work offline)
        redoc_url=None,
    )
    serve_docs(app)
    app.state.stowage = state
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        in_flight=settings.in_flight_body_bytes,
        retry_after_s=settings.retry_after_s,
    )
    modules = (reports, nodes, cluster, gpus, gangs, forecasts, whatif, recommendations, audit)
    for module in modules:
        app.include_router(module.router, responses=AUTHENTICATED_RESPONSES)
    app.include_router(health.router, responses={503: {"description": "Not ready: why."}})
    app.include_router(webhook.router, responses={413: BODY_LIMIT, 503: BODIES_BUSY})

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeoutError)
    async def database_unavailable(_: Request, error: Exception) -> JSONResponse:
        log.error("database_unavailable", error=type(error).__name__)
        return JSONResponse(
            {"detail": "database unavailable; nothing was stored, retry later"},
            status_code=503,
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    original_openapi = app.openapi

    def openapi() -> dict[str, object]:
        schema = original_openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        report_schema = NodeReport.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(report_schema.pop("$defs", {}))
        components["NodeReport"] = report_schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _every(interval_s: float, job: Callable[[AppState], None], state: AppState) -> None:
    """Run ``job`` in a worker thread every ``interval_s`` while serving."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(job, state)
        except Exception:  # upkeep must never stop the server
            log.exception("background_job_failed", job=job.__name__)


def run_fold(state: AppState) -> None:
    """Fold the pending samples of closed 5-minute buckets into the rollups."""
    started = time.perf_counter()
    folded = fold_closed(state.engine, now=state.clock())
    if folded:
        log.info("rollups_folded", reports=folded, seconds=round(time.perf_counter() - started, 3))


BODY_LIMIT: Final[dict[str, Any]] = {
    "description": "The request body is over STOWAGE_MAX_BODY_BYTES."
}
BODIES_BUSY: Final[dict[str, Any]] = {
    "description": "Too many request bodies in progress (STOWAGE_IN_FLIGHT_BODY_BYTES, "
    "STOWAGE_MAX_RECEIVING); nothing was done. Retry-After."
}
#: What every authenticated route may answer besides its own codes (documented once).
AUTHENTICATED_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "No valid bearer token (audited, once a minute per source)."},
    403: {"description": "The token's role may not call this route (audited)."},
    413: BODY_LIMIT,
    503: {
        "description": "The database is unavailable, or too many request bodies are in "
        "progress; nothing was stored. Retry-After."
    },
}


def run_prune(state: AppState) -> None:
    """Apply retention once (also ``stowage-optimizer db prune``)."""
    settings = state.settings
    with state.sessions.begin() as session:
        result = prune(
            session,
            now=state.clock(),
            raw_retention=timedelta(seconds=settings.raw_retention_s),
            rollup_5m_retention=timedelta(seconds=settings.rollup_5m_retention_s),
            rollup_1h_retention=timedelta(seconds=settings.rollup_1h_retention_s),
            audit_retention=timedelta(seconds=settings.audit_retention_s),
            topology_retention=timedelta(seconds=settings.topology_retention_s),
        )
    log.info("pruned", **result.__dict__)
