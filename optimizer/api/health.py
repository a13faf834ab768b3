"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

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
def readyz(state: StateDep) -> JSONResponse:
    """Ready when the database answers and its schema is at this version's migration."""
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        revision = current_revision(state.engine)
    except SQLAlchemyError as error:
        return JSONResponse(
            {"status": "unavailable", "reason": f"database: {type(error).__name__}"},
            status_code=503,
            headers={"Retry-After": str(state.settings.retry_after_s)},
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
            "stowage_cluster_gpus",
            "GPUs of fresh nodes by model and state.",
            labels=["model", "state"],
        )
        for model, counts in summary.by_model.items():
            values: dict[str, Any] = {
                "allocated": counts.allocated,
                "allocated_idle": counts.allocated_idle,
                "free": counts.free,
                "unhealthy": counts.unhealthy,
            }
            for name, value in values.items():
                gpus.add_metric([model, name], value)
        yield gpus
        yield GaugeMetricFamily(
            "stowage_cluster_fragmented_gpus",
            "Free GPUs no request shape can use.",
            value=summary.fragmented_gpus,
        )
        yield GaugeMetricFamily(
            "stowage_cluster_stale_nodes",
            "Nodes whose agent stopped reporting.",
            value=len(summary.stale_nodes),
        )
        yield GaugeMetricFamily(
            "stowage_cluster_power_watts", "Power draw of fresh nodes' GPUs.", value=summary.power_w
        )
