"""Forecasts as a service: demand per scope from a snapshot, demand samples recorded on a
schedule, retraining over the store (SQLite and PostgreSQL), and the forecasts and capacity
API reading what retraining stored."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, get_args

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from optimizer.api.forecasts import MetricName, Step
from optimizer.cli.forecast import parse_duration_s
from optimizer.controller.forecasting import DemandRecorder, ForecastTrainer, forecast_payload
from optimizer.controller.observe import observe
from optimizer.forecast.capacity import capacity_need
from optimizer.forecast.demand import Demand, demand_by_scope, scope_name
from optimizer.forecast.models import MODELS
from optimizer.forecast.series import Series
from optimizer.store import forecasts as store
from optimizer.store.forecasts import METRICS, RESOLUTIONS
from optimizer.store.models import DemandSample, Forecast, JobRun
from shared.labels import NODE_POOL, SCHEDULING_GATE
from tests.optimizer.conftest import WallClock, auth

READER = auth("sre@example.com")


def _node(name: str, *, pool: str, product: str) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name, NODE_POOL: pool, "nvidia.com/gpu.product": product}
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"}},
    }


def _pod(name: str, *, gpus: int, node: str | None = None, **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]
    }
    if node:
        spec["nodeName"] = node
    else:
        spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": name, "labels": labels},
        "spec": spec,
        "status": {"phase": "Running" if node else "Pending"},
    }


def test_demand_by_scope_counts_what_holds_and_what_waits() -> None:
    nodes = [
        _node("a", pool="train", product="NVIDIA-H100"),
        _node("b", pool="infer", product="NVIDIA-L4"),
    ]
    gang = {"stowage.io/gang": "g", "stowage.io/gang-size": "2"}
    pods = [
        _pod("run", gpus=4, node="a"),
        _pod("g-0", gpus=2, **gang),
        _pod("g-1", gpus=2, **gang),
    ]
    demand = demand_by_scope(observe(nodes=nodes, pods=pods, enabled={"ml"}).snapshot)
    assert demand["cluster"] == Demand(capacity_gpus=16, allocated_gpus=4, pending_gpus=4)
    assert demand["pool/train"] == Demand(capacity_gpus=8, allocated_gpus=4, pending_gpus=0)
    assert demand["pool/infer"] == Demand(capacity_gpus=8, allocated_gpus=0, pending_gpus=0)
    assert demand["model/NVIDIA-H100"].allocated_gpus == 4
    # the gang may land on either model and pool: it waits in the cluster and namespace only
    assert demand["namespace/ml"] == Demand(capacity_gpus=0, allocated_gpus=4, pending_gpus=4)
    assert demand["cluster"].demand_gpus == 8


@pytest.mark.parametrize(
    ("kind", "value", "want"),
    [
        pytest.param("cluster", None, "cluster", id="cluster"),
        pytest.param("model", "NVIDIA-H100", "model/NVIDIA-H100", id="model"),
    ],
)
def test_scope_name(kind: str, value: str | None, want: str) -> None:
    assert scope_name(kind, value) == want


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        pytest.param("rack", "r1", "unknown scope kind", id="unknown-kind"),
        pytest.param("queue", None, "needs a value", id="no-value"),
    ],
)
def test_scope_name_refuses(kind: str, value: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scope_name(kind, value)


@pytest.mark.parametrize(
    ("p90", "step_s", "wait_s", "needed", "peak"),
    [
        # a one-step spike of 20 over 10: with a 1-step wait the spike itself is needed
        pytest.param([10, 20, 10, 10], 3600, 3600, 20.0, 1, id="spike-no-wait"),
        # with two hours of patience the best two-step window averages 15
        pytest.param([10, 20, 10, 10], 3600, 7200, 15.0, 0, id="spike-two-hours"),
        # a wait shorter than a step still looks at single steps
        pytest.param([5, 7, 6], 3600, 60, 7.0, 1, id="wait-under-a-step"),
        # a wait longer than the path averages the whole path
        pytest.param([2, 4], 300, 86_400, 3.0, 0, id="wait-over-the-path"),
    ],
)
def test_capacity_need(
    p90: list[float], step_s: int, wait_s: float, needed: float, peak: int
) -> None:
    need = capacity_need(p90, step_s=step_s, target_wait_s=wait_s)
    assert need.needed_gpus == needed
    assert need.peak_index == peak
    assert need.additional(needed - 0.5) == 1
    assert need.additional(needed + 3) == 0
    assert need.spare(needed + 3) == 3


def _daily_wave(engine: Engine, clock: WallClock, *, days: int, scope: str = "cluster") -> None:
    """Demand samples every 5 minutes up to the clock: 20 GPUs at night, 60 by day."""
    start = clock.now - timedelta(days=days)
    with Session(engine) as session, session.begin():
        for k in range(days * 288):
            at = start + timedelta(minutes=5 * k)
            hour = at.hour + at.minute / 60
            allocated = 40 + 20 * math.sin(2 * math.pi * (hour - 6) / 24)
            demand = {scope: Demand(capacity_gpus=64, allocated_gpus=allocated, pending_gpus=0)}
            store.record_demand(session, at=at, demand=demand)


def _trainer(engine: Engine, clock: WallClock, **overrides: Any) -> ForecastTrainer:
    options: dict[str, Any] = {
        "clock": clock,
        "interval": timedelta(hours=1),
        "history": timedelta(days=35),
        "demand_retention": timedelta(days=90),
        "resolutions": {3600: 48 * 3600},
    }
    options.update(overrides)
    return ForecastTrainer(engine, **options)


def test_demand_series_marks_gaps_and_runs_to_the_asked_time(
    engine: Engine, clock: WallClock
) -> None:
    with Session(engine) as session, session.begin():
        for hours in (0, 1, 4):
            at = clock.now - timedelta(hours=6 - hours)
            demand = {"cluster": Demand(capacity_gpus=8, allocated_gpus=hours, pending_gpus=1)}
            store.record_demand(session, at=at, demand=demand)
    with Session(engine) as session:
        series = store.demand_series(
            session,
            scope="cluster",
            step_s=3600,
            since=clock.now - timedelta(days=1),
            until=clock.now,
        )
        assert store.capacity_now(session, scope="cluster") == 8
        assert (
            store.demand_series(
                session, scope="pool/none", step_s=3600, since=clock.now, until=clock.now
            )
            is None
        )
    assert series is not None
    values = [None if math.isnan(v) else v for v in series.values]
    # samples 6 h, 5 h and 2 h ago; then gaps up to the step holding "now"
    assert values == [1, 2, None, None, 5, None, None]


def test_recorder_samples_at_most_once_per_interval(engine: Engine, clock: WallClock) -> None:
    snapshot = observe(nodes=[_node("a", pool="p", product="X")], pods=[], enabled=set()).snapshot
    recorder = DemandRecorder(engine, clock=clock, interval=timedelta(seconds=60))
    assert recorder.maybe_record(snapshot)
    clock.advance(30)
    assert not recorder.maybe_record(snapshot)
    clock.advance(30)
    assert recorder.maybe_record(snapshot)
    with Session(engine) as session:
        rows = session.scalar(select(func.count()).select_from(DemandSample))
    assert rows == 2 * 3  # cluster, pool/p, model/X at two instants


def test_trainer_stores_forecasts_on_schedule(engine: Engine, clock: WallClock) -> None:
    _daily_wave(engine, clock, days=10)
    trainer = _trainer(engine, clock)
    assert trainer.due()
    report = trainer.run_once()
    assert report.trained == ["gpu_demand:cluster@3600"]
    assert not trainer.due()
    clock.advance(3600)
    assert trainer.due()
    with Session(engine) as session:
        row = store.latest_forecast(session, metric="gpu_demand", scope="cluster", step_s=3600)
    assert row is not None
    points = row.payload["points"]
    assert len(points) == 48
    assert all(p["p10"] <= p["p50"] <= p["p90"] for p in points)
    assert row.payload["capacity_gpus"] == 64
    assert {m["model"] for m in row.payload["models"]} <= set(MODELS.names())
    for anchor in row.payload["models"]:  # every candidate's score, the chosen one's among them
        scores = anchor["validation_mae_by_model"]
        assert anchor["validation_mae"] == scores[anchor["model"]]
        assert "persistence" in scores


def test_a_scope_that_cannot_be_forecast_is_skipped_with_why_and_the_rest_go_on(
    engine: Engine, clock: WallClock
) -> None:
    _daily_wave(engine, clock, days=3)
    with Session(engine) as session, session.begin():
        for hours in (5, 4, 3):  # a broken writer: no finite value at all
            broken = Demand(capacity_gpus=8, allocated_gpus=math.inf, pending_gpus=0)
            store.record_demand(
                session, at=clock.now - timedelta(hours=hours), demand={"queue/broken": broken}
            )
    report = _trainer(engine, clock).run_once()
    assert report.trained == ["gpu_demand:cluster@3600"]
    assert "no observations" in report.skipped["gpu_demand:queue/broken@3600"]


def test_trainer_forecasts_a_short_history_by_persistence_and_says_so(
    engine: Engine, clock: WallClock
) -> None:
    with Session(engine) as session, session.begin():
        for hours in (3, 2):
            at = clock.now - timedelta(hours=hours)
            demand = {"queue/new": Demand(capacity_gpus=0, allocated_gpus=hours, pending_gpus=1)}
            store.record_demand(session, at=at, demand=demand)
    report = _trainer(engine, clock).run_once()
    assert report.trained == ["gpu_demand:queue/new@3600"]
    with Session(engine) as session:
        row = store.latest_forecast(session, metric="gpu_demand", scope="queue/new", step_s=3600)
    assert row is not None
    assert {m["model"] for m in row.payload["models"]} == {"persistence"}
    assert "shorter than one season" in row.payload["models"][0]["reason"]
    # the last whole step (an hour ago) had no sample: carried from the one before
    assert row.payload["points"][0]["p50"] == 3.0


def test_trainer_prunes_old_demand_and_job_runs(engine: Engine, clock: WallClock) -> None:
    _daily_wave(engine, clock, days=3)
    with Session(engine) as session, session.begin():
        for days in (2, 0.5):
            end = clock.now - timedelta(days=days)
            session.add(
                JobRun(
                    namespace="ml",
                    gang=f"g{days}",
                    queue=None,
                    gpus=8.0,
                    pods=1,
                    started_at=end - timedelta(hours=1),
                    finished_at=end,
                    phase="succeeded",
                )
            )
    _trainer(engine, clock, demand_retention=timedelta(days=1)).run_once()
    with Session(engine) as session:
        oldest = session.scalar(select(func.min(DemandSample.at)))
        runs = session.scalars(select(JobRun.gang)).all()
    assert oldest is not None
    assert oldest >= clock.now - timedelta(days=1)
    assert runs == ["g0.5"]


def _wave_series(*, days: int, step_s: int, until: datetime) -> Series:
    """The wave of :func:`_daily_wave` as a series of whole steps ending before ``until``."""
    steps = days * 86_400 // step_s
    start_s = int(until.timestamp()) // step_s * step_s - steps * step_s
    hours = (np.arange(steps) * step_s + start_s) % 86_400 / 3600
    return Series(start_s, step_s, 40 + 20 * np.sin(2 * np.pi * (hours - 6) / 24))


@pytest.fixture(scope="module")
def payloads() -> dict[tuple[str, int], dict[str, Any]]:
    """Forecasts computed once for the module (retraining over the store is tested above)."""
    until = WallClock().now
    out = {}
    for scope in ("cluster", "model/NVIDIA-H100"):
        for step_s, horizon_s, days in ((300, 6 * 3600, 4), (3600, 168 * 3600, 21)):
            series = _wave_series(days=days, step_s=step_s, until=until)
            out[scope, step_s] = forecast_payload(
                metric="gpu_demand",
                scope=scope,
                series=series,
                horizon=horizon_s // step_s,
                capacity=64.0,
                seed=0,
            )
    return out


@pytest.fixture
def trained(
    engine: Engine, clock: WallClock, payloads: dict[tuple[str, int], dict[str, Any]]
) -> None:
    with Session(engine) as session, session.begin():
        for (scope, step_s), payload in payloads.items():
            store.save_forecast(
                session,
                metric="gpu_demand",
                scope=scope,
                step_s=step_s,
                created_at=clock.now,
                horizon_s=RESOLUTIONS[step_s],
                payload=payload,
            )


@pytest.mark.usefixtures("trained")
def test_forecasts_api_serves_the_stored_forecast(client: TestClient) -> None:
    response = client.get(
        "/v1/forecasts",
        params={"scope": "cluster", "metric": "gpu_demand", "horizon": "24h", "step": "1h"},
        headers=READER,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["points"]) == 24
    assert body["models"][0]["horizon_steps"] == 1
    assert body["history"]["gaps"] == 0
    # the wave peaks at 60 GPUs around noon, bottoms at 20 around midnight
    p50 = [p["p50"] for p in body["points"]]
    assert 50 < max(p50) < 70
    assert 10 < min(p50) < 30
    short = client.get(
        "/v1/forecasts", params={"horizon": "1h", "step": "5m"}, headers=READER
    ).json()
    assert len(short["points"]) == 12


@pytest.mark.usefixtures("trained")
@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        pytest.param({"scope": "queue/none"}, 404, "no gpu_demand forecast", id="no-forecast"),
        pytest.param(
            {"metric": "cost"}, 422, "'gpu_demand' or 'gpu_activity'", id="unknown-metric"
        ),
        pytest.param({"step": "10m"}, 422, "'5m' or '1h'", id="unknown-step"),
        pytest.param({"horizon": "30d"}, 400, "reach 168 h", id="too-far"),
        pytest.param({"horizon": "0h"}, 400, "must be a positive duration", id="zero-horizon"),
        pytest.param({"horizon": "soon"}, 422, "should match pattern", id="bad-horizon"),
    ],
)
def test_forecasts_api_refusals(
    client: TestClient, params: dict[str, str], status: int, message: str
) -> None:
    response = client.get("/v1/forecasts", params=params, headers=READER)
    assert response.status_code == status
    assert message in str(response.json()["detail"])


def test_the_api_literals_are_the_stored_metrics_and_steps() -> None:
    assert get_args(MetricName) == METRICS
    assert {parse_duration_s(s) for s in get_args(Step)} == set(RESOLUTIONS)


def test_forecasts_api_needs_a_reader(client: TestClient) -> None:
    assert client.get("/v1/forecasts").status_code == 401


@pytest.mark.usefixtures("trained")
def test_capacity_plan_per_model(client: TestClient, engine: Engine) -> None:
    response = client.get(
        "/v1/capacity/plan",
        params={"scope": "cluster", "horizon": "7d", "target_wait": "1h"},
        headers=READER,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    [line] = body["items"]
    assert line["model"] == "NVIDIA-H100"
    with Session(engine) as session:
        row = session.scalars(
            select(Forecast).where(Forecast.subject == "gpu_demand:model/NVIDIA-H100@3600")
        ).one()
    peak = max(p["p90"] for p in row.payload["points"])
    assert line["needed_gpus"] == pytest.approx(peak, abs=1e-3)
    assert line["capacity_gpus"] == 64
    assert line["additional_gpus"] == max(0, math.ceil(peak - 64))
    assert line["spare_gpus"] == max(0, math.floor(64 - peak))
    patient = client.get(
        "/v1/capacity/plan",
        params={"scope": "model/NVIDIA-H100", "horizon": "7d", "target_wait": "12h"},
        headers=READER,
    ).json()
    assert patient["items"][0]["needed_gpus"] < line["needed_gpus"]


@pytest.mark.usefixtures("trained")
def test_metrics_export_forecast_and_actual(
    client: TestClient, engine: Engine, clock: WallClock
) -> None:
    with Session(engine) as session, session.begin():
        demand = {"cluster": Demand(capacity_gpus=64, allocated_gpus=30, pending_gpus=2)}
        store.record_demand(session, at=clock.now, demand=demand)
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    [actual] = families["stowage_gpu_demand_gpus"].samples
    assert actual.labels == {"scope": "cluster"}
    assert actual.value == 32
    forecast = {
        (s.labels["scope"], s.labels["step"], s.labels["quantile"]): s.value
        for s in families["stowage_forecast_gpu_demand_gpus"].samples
    }
    with Session(engine) as session:
        row = store.latest_forecast(session, metric="gpu_demand", scope="cluster", step_s=3600)
    assert row is not None
    first = row.payload["points"][0]  # the step holding the clock
    assert forecast["cluster", "3600s", "0.5"] == pytest.approx(first["p50"])
    assert forecast["cluster", "3600s", "0.1"] <= forecast["cluster", "3600s", "0.9"]
    assert ("model/NVIDIA-H100", "300s", "0.9") in forecast
    clock.advance(2.5 * 3600)  # the third hour of the forecast now holds the clock
    later = text_string_to_metric_families(client.get("/metrics").text)
    [family] = [f for f in later if f.name == "stowage_forecast_gpu_demand_gpus"]
    [p50] = [
        s.value
        for s in family.samples
        if s.labels == {"scope": "cluster", "step": "3600s", "quantile": "0.5"}
    ]
    assert p50 == pytest.approx(row.payload["points"][2]["p50"])
    # the peak ahead (what the capacity alert compares) and the capacity the forecast saw
    peaks = {
        (s.labels["scope"], s.labels["step"]): s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        if f.name == "stowage_forecast_gpu_demand_peak_gpus"
        for s in f.samples
    }
    assert peaks["cluster", "3600s"] == pytest.approx(
        max(p["p90"] for p in row.payload["points"][2:])
    )
    capacity = {
        s.labels["scope"]: s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        if f.name == "stowage_gpu_capacity_gpus"
        for s in f.samples
    }
    assert capacity["cluster"] == row.payload["capacity_gpus"]
