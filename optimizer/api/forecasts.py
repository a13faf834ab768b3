"""``GET /v1/forecasts`` and ``GET /v1/capacity/plan``: stored forecasts for capacity planners.

The leader retrains forecasts on a schedule (optimizer/controller/forecasting.py); these
routes only read the newest stored one, so they answer without training anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, HTTPException, Query
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from optimizer import metrics as metric_names
from optimizer.api.deps import Reader, SessionDep, StateDep
from optimizer.api.state import AppState
from optimizer.forecast.capacity import capacity_need
from optimizer.store.forecasts import (
    RESOLUTIONS,
    forecast_scopes,
    latest_demand,
    latest_forecast,
    latest_forecasts,
)
from optimizer.store.models import DemandSample, Forecast
from shared.units import duration_s

router = APIRouter(tags=["forecasts"])

PROBABILITY: Final = 0.9
#: A duration in a query: digits and a unit (s when none).
DURATION: Final = r"^[0-9]{1,9}[smhdw]?$"
MetricName = Literal["gpu_demand", "gpu_activity"]  # store.forecasts.METRICS
Step = Literal["5m", "1h"]  # store.forecasts.RESOLUTIONS
NOT_YET: Final[dict[int | str, dict[str, Any]]] = {
    400: {"description": "A horizon beyond what is kept at that step."},
    404: {"description": "No forecast of that metric, scope and step yet."},
}


def seconds(text: str, name: str) -> int:
    """Seconds of a query's duration (its pattern already checked the form); a zero
    duration is a 400 naming the parameter."""
    try:
        return duration_s(text)
    except ValueError as error:
        raise HTTPException(400, f"{name}: {error}") from None


def stored(
    session: SessionDep, state: StateDep, *, metric: str, scope: str, step_s: int
) -> Forecast:
    row = latest_forecast(session, metric=metric, scope=scope, step_s=step_s)
    if row is None:
        interval = state.settings.forecast_interval_s
        raise HTTPException(
            404,
            f"no {metric} forecast of scope {scope!r} at step {step_s} s yet: the leader "
            f"retrains every {interval:g} s, for scopes with history "
            "(GET /v1/forecasts/scopes lists them)",
        )
    return row


def points_within(row: Forecast, horizon_s: int) -> list[dict[str, Any]]:
    payload = row.payload
    if horizon_s > row.horizon_s:
        raise HTTPException(
            400, f"horizon: forecasts at this step reach {row.horizon_s / 3600:g} h"
        )
    steps = max(1, horizon_s // int(payload["step_s"]))
    points: list[dict[str, Any]] = payload["points"][:steps]
    return points


@router.get("/v1/forecasts", responses=NOT_YET)
def get_forecast(
    session: SessionDep,
    state: StateDep,
    _: Reader,
    scope: Annotated[
        str, Query(description="cluster, pool/P, model/M, queue/Q or namespace/N")
    ] = "cluster",
    metric: Annotated[
        MetricName,
        Query(
            description="gpu_demand (allocated + pending GPUs) or gpu_activity "
            "(mean utilisation, 0-1)"
        ),
    ] = "gpu_demand",
    horizon: Annotated[
        str, Query(description="How far ahead: 6h, 24h, 7d.", pattern=DURATION)
    ] = "24h",
    step: Annotated[Step, Query(description="The step of the forecast.")] = "1h",
) -> dict[str, Any]:
    """The newest stored forecast: p10, p50 and p90 per step, the model chosen at each
    anchor horizon with why and its validation MAE, and the history it was trained on."""
    step_s = seconds(step, "step")
    row = stored(session, state, metric=metric, scope=scope, step_s=step_s)
    payload = dict(row.payload)
    payload["points"] = points_within(row, seconds(horizon, "horizon"))
    payload["created_at"] = row.created_at
    return payload


@router.get("/v1/forecasts/scopes")
def list_scopes(session: SessionDep, _: Reader) -> dict[str, Any]:
    """Every subject with a stored forecast (``metric:scope@step``)."""
    subjects = session.scalars(select(Forecast.subject).distinct()).all()
    demand = session.scalars(select(DemandSample.scope).distinct()).all()
    return {"forecasts": sorted(subjects), "demand_scopes": sorted(demand)}


@router.get("/v1/capacity/plan", responses=NOT_YET)
def capacity_plan(
    session: SessionDep,
    state: StateDep,
    _: Reader,
    scope: Annotated[
        str, Query(description="cluster (per GPU model), model/M, pool/P, …")
    ] = "cluster",
    horizon: Annotated[str, Query(description="How far ahead: 24h, 7d.", pattern=DURATION)] = "7d",
    target_wait: Annotated[
        str, Query(description="Longest acceptable wait: 30m, 1h.", pattern=DURATION)
    ] = "1h",
) -> dict[str, Any]:
    """GPUs needed so that predicted demand waits no longer than ``target_wait`` with 90%
    probability (per step), against today's capacity: per GPU model for ``cluster``, else
    for the scope. Method: docs/architecture.md, "Capacity planning"."""
    horizon_s = seconds(horizon, "horizon")
    wait_s = seconds(target_wait, "target_wait")
    step_s = 3600 if horizon_s > RESOLUTIONS[300] else 300
    scopes = [scope]
    if scope == "cluster":
        by_model = forecast_scopes(session, metric="gpu_demand", step_s=step_s, kind="model")
        scopes = by_model or scopes
    lines = []
    for name in scopes:
        row = stored(session, state, metric="gpu_demand", scope=name, step_s=step_s)
        points = points_within(row, horizon_s)
        need = capacity_need([p["p90"] for p in points], step_s=step_s, target_wait_s=wait_s)
        capacity = float(row.payload.get("capacity_gpus") or 0.0)
        lines.append(
            {
                "scope": name,
                "model": name.removeprefix("model/") if name.startswith("model/") else None,
                "capacity_gpus": capacity,
                "needed_gpus": round(need.needed_gpus, 3),
                "additional_gpus": need.additional(capacity),
                "spare_gpus": need.spare(capacity),
                "peak_window_start": points[need.peak_index]["at"],
                "forecast_created_at": _iso(row.created_at),
                "models": row.payload["models"],
            }
        )
    return {
        "scope": scope,
        "horizon_s": horizon_s,
        "target_wait_s": wait_s,
        "step_s": step_s,
        "probability": PROBABILITY,
        "items": lines,
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class ForecastCollector(Collector):
    """Forecast against actual at scrape time: each stored forecast's quantiles for the step
    holding now, and each scope's latest demand sample."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now_s = self.state.clock().timestamp()
        try:
            with self.state.sessions() as session:
                rows = latest_forecasts(session)
                actual = latest_demand(session)
        except SQLAlchemyError:
            return
        demand = GaugeMetricFamily(
            metric_names.FORECAST_GPU_DEMAND,
            "Forecast GPU demand (allocated + pending) for the current step, by quantile.",
            labels=["scope", "step", "quantile"],
        )
        activity = GaugeMetricFamily(
            metric_names.FORECAST_GPU_ACTIVITY,
            "Forecast mean GPU utilisation for the current step, by quantile.",
            labels=["scope", "step", "quantile"],
        )
        peak = GaugeMetricFamily(
            metric_names.FORECAST_GPU_DEMAND_PEAK,
            "The largest p90 GPU demand forecast from now to the forecast's horizon (hourly "
            "forecasts: the next 7 days).",
            labels=["scope", "step"],
        )
        capacity = GaugeMetricFamily(
            metric_names.GPU_CAPACITY,
            "GPUs of the scope when its demand forecast was made.",
            labels=["scope"],
        )
        for row in rows:
            payload = row.payload
            index = _index_at(payload, now_s)
            if index is None:
                continue
            point = payload["points"][index]
            family = demand if payload["metric"] == "gpu_demand" else activity
            step = f"{int(payload['step_s'])}s"
            for key, quantile in (("p10", "0.1"), ("p50", "0.5"), ("p90", "0.9")):
                family.add_metric([payload["scope"], step, quantile], point[key])
            if payload["metric"] == "gpu_demand":
                ahead = max(p["p90"] for p in payload["points"][index:])
                peak.add_metric([payload["scope"], step], ahead)
                if payload["step_s"] == max(RESOLUTIONS) and "capacity_gpus" in payload:
                    capacity.add_metric([payload["scope"]], float(payload["capacity_gpus"]))
        yield demand
        yield activity
        yield peak
        yield capacity
        observed = GaugeMetricFamily(
            metric_names.GPU_DEMAND,
            "GPU demand (allocated + pending) at the leader's latest sample, by scope.",
            labels=["scope"],
        )
        for scope, value in actual.items():
            observed.add_metric([scope], value)
        yield observed


def _index_at(payload: dict[str, Any], now_s: float) -> int | None:
    """The index of the forecast point whose step holds ``now_s`` (None: the forecast does
    not reach)."""
    points = payload["points"]
    if not points:
        return None
    first_s = datetime.fromisoformat(points[0]["at"].replace("Z", "+00:00")).timestamp()
    index = math.floor((now_s - first_s) / float(payload["step_s"]))  # points are consecutive
    return index if 0 <= index < len(points) else None
