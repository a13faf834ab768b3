"""What-if replays: arrivals sampled from a demand forecast and finished job shapes,
replayed through the cycle on today's and a changed node count; and the API (SQLite and
PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, get_args

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from optimizer.api.whatif import Policy
from optimizer.controller.forecasting import forecast_payload
from optimizer.forecast.series import Series
from optimizer.forecast.whatif import JobShape, WhatIfError, arrivals, replay
from optimizer.simulate.replay import POLICIES
from optimizer.store import forecasts as store
from optimizer.store.models import JobRun
from tests.optimizer.conftest import WallClock, auth

SHAPES = [JobShape(8, 3600), JobShape(2, 1800), JobShape(1, 600), JobShape(16, 7200)]
READER = auth("sre@example.com")


def test_arrivals_follow_littles_law() -> None:
    """Demand of D GPUs with jobs of mean w GPU-seconds: D / w jobs a second."""
    demand = [40.0] * 168
    jobs = arrivals(demand, step_s=3600, shapes=SHAPES, seed=1)
    work = np.mean([s.gpus * s.duration_s for s in SHAPES])
    within = [j for j in jobs if j.submit_s >= 0]
    expected = 40 * 168 * 3600 / work
    assert abs(len(within) - expected) < 4 * np.sqrt(expected)  # Poisson: 4 sigma
    assert min(j.submit_s for j in jobs) < 0  # a warm-up before the horizon
    assert [j.index for j in jobs] == list(range(len(jobs)))
    assert jobs == arrivals(demand, step_s=3600, shapes=SHAPES, seed=1)  # seeded


@pytest.mark.parametrize(
    ("demand", "shapes", "message"),
    [
        pytest.param([10.0], [], "no finished jobs", id="no-shapes"),
        pytest.param([1e6] * 168, SHAPES, "at most 20,000", id="too-many-jobs"),
    ],
)
def test_arrivals_refuse(demand: list[float], shapes: list[JobShape], message: str) -> None:
    with pytest.raises(WhatIfError, match=message):
        arrivals(demand, step_s=3600, shapes=shapes, seed=0)


def test_more_nodes_wait_less_fewer_wait_more() -> None:
    jobs = arrivals([60.0] * 72, step_s=3600, shapes=SHAPES, seed=3)
    fifo = POLICIES["fifo"]
    waits = [
        replay(jobs, nodes=n, gpus_per_node=8, policy=fifo, seed=0).avg_wait_s for n in (7, 8, 10)
    ]
    assert waits[0] > waits[1] > waits[2]
    small = replay(jobs, nodes=1, gpus_per_node=8, policy=fifo, seed=0)
    assert small.too_large == sum(1 for j in jobs if j.submit_s >= 0 and j.gpus > 8) > 0
    with pytest.raises(WhatIfError, match="no node"):
        replay(jobs, nodes=0, gpus_per_node=8, policy=fifo, seed=0)


def test_the_api_policies_are_the_replay_policies() -> None:
    assert set(get_args(Policy)) == set(POLICIES)


def _forecast(engine: Engine, clock: WallClock, *, level: float = 60.0) -> None:
    rng = np.random.default_rng(0)
    steps = 21 * 24
    start_s = int(clock.now.timestamp()) // 3600 * 3600 - steps * 3600
    series = Series(start_s, 3600, level + rng.normal(0, 1, steps))
    payload: dict[str, Any] = forecast_payload(
        metric="gpu_demand", scope="cluster", series=series, horizon=168, capacity=64.0, seed=0
    )
    with Session(engine) as session, session.begin():
        store.save_forecast(
            session,
            metric="gpu_demand",
            scope="cluster",
            step_s=3600,
            created_at=clock.now,
            horizon_s=168 * 3600,
            payload=payload,
        )


def _runs(engine: Engine, clock: WallClock, count: int) -> None:
    with Session(engine) as session, session.begin():
        for k in range(count):
            shape = SHAPES[k % len(SHAPES)]
            end = clock.now - timedelta(hours=k)
            session.add(
                JobRun(
                    namespace="ml",
                    gang=f"g{k}",
                    queue=None,
                    gpus=shape.gpus,
                    pods=1,
                    started_at=end - timedelta(seconds=shape.duration_s),
                    finished_at=end,
                    phase="succeeded",
                )
            )


def test_whatif_compares_todays_nodes_with_two_more(
    client: TestClient, engine: Engine, clock: WallClock
) -> None:
    _forecast(engine, clock)
    _runs(engine, clock, 20)
    response = client.post(
        "/v1/capacity/whatif", json={"add_nodes": 2, "horizon": "3d"}, headers=READER
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["nodes_before"], body["nodes_after"]) == (8, 10)  # 64 GPUs of 8 today
    assert body["job_shapes"] == 20
    assert body["before"]["jobs"] == body["after"]["jobs"] > 0  # the same arrivals
    assert body["after"]["avg_wait_s"] < body["before"]["avg_wait_s"]
    assert body["after"]["utilisation"] < body["before"]["utilisation"]


@pytest.mark.parametrize(
    ("runs", "request_body", "status", "message"),
    [
        pytest.param(3, {}, 409, "3 jobs finished", id="too-few-jobs"),
        pytest.param(20, {"add_nodes": -8}, 400, "no node left", id="no-node-left"),
        pytest.param(20, {"horizon": "30d"}, 400, "reach 168 h", id="too-far"),
        pytest.param(20, {"scope": "queue/none"}, 404, "no gpu_demand forecast", id="no-forecast"),
        pytest.param(20, {"policy": "random"}, 422, "fifo", id="unknown-policy"),
    ],
)
def test_whatif_refusals(
    client: TestClient,
    engine: Engine,
    clock: WallClock,
    runs: int,
    request_body: dict[str, Any],
    status: int,
    message: str,
) -> None:
    _forecast(engine, clock)
    _runs(engine, clock, runs)
    response = client.post("/v1/capacity/whatif", json=request_body, headers=READER)
    assert response.status_code == status, response.text
    assert message in str(response.json()["detail"])
