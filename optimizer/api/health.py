"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from optimizer import metrics as metric_names
from optimizer.api.cluster import cluster_summary
from optimizer.api.deps import StateDep
from optimizer.api.state import AppState
from optimizer.store.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when the database answers, within ``STOWAGE_INGEST_ANSWER_S``, and its schema is
    at this version's migration. A frozen database gives 503 in bounded time: the check runs
    on one dedicated thread, and while an earlier check still hangs no new one starts."""
    unavailable = {"Retry-After": str(state.settings.retry_after_s)}
    pending = state.readiness_check
    if pending is not None and not pending.done():
        return JSONResponse(
            {"status": "unavailable", "reason": "database: an earlier check still waits"},
            status_code=503,
            headers=unavailable,
        )
    check = state.readiness_checker.submit(_schema_revision, state)
    state.readiness_check = check
    try:
        revision = await asyncio.wait_for(
            asyncio.wrap_future(check), timeout=state.settings.ingest_answer_s
        )
    except TimeoutError:
        reason = f"database: no answer within {state.settings.ingest_answer_s:g} s"
        return JSONResponse(
            {"status": "unavailable", "reason": reason}, status_code=503, headers=unavailable
        )
    except SQLAlchemyError as error:
        return JSONResponse(
            {"status": "unavailable", "reason": f"database: {type(error).__name__}"},
            status_code=503,
            headers=unavailable,
        )
    head = head_revision()
    if revision != head:
        return JSONResponse(
            {
                "status": "unavailable",
                "reason": f"schema at {revision}, needs {head}: run `stowage-optimizer db upgrade`",
            },
            status_code=503,
        )
    return JSONResponse({"status": "ready", "schema_revision": revision})


def _schema_revision(state: AppState) -> str | None:
    with state.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return current_revision(state.engine)


@router.get("/metrics", include_in_schema=False)
def metrics(state: StateDep) -> Response:
    """Prometheus exposition: the optimizer's own metrics and the cluster's, at scrape time."""
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


class ClusterCollector(Collector):
    """Cluster gauges computed from the store at scrape time."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        state = self.state
        try:
            with state.sessions() as session:
                summary = cluster_summary(state, session)
        except SQLAlchemyError:
            return
        gpus = GaugeMetricFamily(
            metric_names.CLUSTER_GPUS,
            "GPUs of fresh nodes by model and state.",
            labels=["model", "state"],
        )
        pools = GaugeMetricFamily(
            metric_names.POOL_GPUS,
            "GPUs of fresh nodes by pool and state.",
            labels=["pool", "state"],
        )
        for family, groups in ((gpus, summary.by_model), (pools, summary.by_pool)):
            for group, counts in groups.items():
                values: dict[str, Any] = {
                    "allocated": counts.allocated,
                    "allocated_idle": counts.allocated_idle,
                    "free": counts.free,
                    "unhealthy": counts.unhealthy,
                }
                for name, value in values.items():
                    family.add_metric([group, name], value)
        yield gpus
        yield pools
        fragmented = GaugeMetricFamily(
            metric_names.FRAGMENTED_GPUS,
            "Free GPUs no request shape can use, by pool and GPU model.",
            labels=["pool", "model"],
        )
        for pool, by_model in summary.fragmented_by_pool.items():
            for model, count in by_model.items():
                fragmented.add_metric([pool, model], count)
        yield fragmented
        yield GaugeMetricFamily(
            metric_names.CLUSTER_FRAGMENTED_GPUS,
            "Free GPUs no request shape can use.",
            value=summary.fragmented_gpus,
        )
        yield GaugeMetricFamily(
            metric_names.CLUSTER_STALE_NODES,
            "Nodes whose agent stopped reporting.",
            value=len(summary.stale_nodes),
        )
        yield GaugeMetricFamily(
            metric_names.CLUSTER_POWER_WATTS,
            "Power draw of fresh nodes' GPUs.",
            value=summary.power_w,
        )
