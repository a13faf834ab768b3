"""The demo's forecasting chapter: three weeks of demand history, retrained, served.

The simulated cluster is minutes old, so its history is made up, and says so: per GPU
model, hourly demand with a daily and a weekly cycle, a slow growth and noise from a fixed
seed, capped by the model's capacity (what does not fit is pending). It is written where
the leader writes demand samples, the real retraining job runs once over it, and the
optimizer's API serves what it stored: ``GET /v1/forecasts`` and ``GET /v1/capacity/plan``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
from sqlalchemy.orm import Session

from optimizer.controller.forecasting import ForecastTrainer
from optimizer.forecast.demand import CLUSTER, Demand
from optimizer.store import forecasts as store
from optimizer.store.engine import make_engine
from optimizer.store.models import JobRun

HISTORY_DAYS: Final = 21
SEED: Final = 7


def demand_history(
    capacity: Mapping[str, int], *, now: datetime, days: int = HISTORY_DAYS, seed: int = SEED
) -> dict[datetime, dict[str, Demand]]:
    """Hourly demand per ``model/…`` scope and the cluster, ending at ``now``."""
    rng = np.random.default_rng(seed)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(days=days)
    history: dict[datetime, dict[str, Demand]] = {}
    for hour in range(days * 24):
        at = start + timedelta(hours=hour)
        daily = math.sin(2 * math.pi * (at.hour - 8) / 24)
        weekday = 1.0 if at.weekday() < 5 else 0.7
        growth = 1 + 0.15 * hour / (days * 24)
        scopes: dict[str, Demand] = {}
        for model, gpus in sorted(capacity.items()):
            wanted = max(0.0, gpus * (0.55 + 0.3 * daily) * weekday * growth)
            wanted += float(rng.normal(0, 0.05 * gpus))
            wanted = max(0.0, round(wanted))
            allocated = min(wanted, gpus)
            scopes[f"model/{model}"] = Demand(gpus, allocated, wanted - allocated)
        scopes[CLUSTER] = Demand(
            sum(d.capacity_gpus for d in scopes.values()),
            sum(d.allocated_gpus for d in scopes.values()),
            sum(d.pending_gpus for d in scopes.values()),
        )
        history[at] = scopes
    return history


#: Made-up finished jobs (GPUs, hours) the what-if draws shapes from, in equal numbers.
JOB_MIX: Final = ((1, 0.5), (2, 1.0), (4, 2.0), (8, 4.0), (8, 1.0))


def job_history(*, now: datetime, count: int = 40) -> list[JobRun]:
    """Finished jobs of the last days, cycling through :data:`JOB_MIX`."""
    runs = []
    for k in range(count):
        gpus, hours = JOB_MIX[k % len(JOB_MIX)]
        end = now - timedelta(hours=2 * k + 1)
        runs.append(
            JobRun(
                namespace="ml",
                gang=f"demo-{k}",
                queue=None,
                gpus=float(gpus),
                pods=max(1, gpus // 8),
                started_at=end - timedelta(hours=hours),
                finished_at=end,
                phase="succeeded",
            )
        )
    return runs


def train_on_history(database_url: str, capacity: Mapping[str, int]) -> list[str]:
    """Write the made-up history (demand and finished jobs) and run the retraining job
    once; returns what it stored."""
    now = datetime.now(UTC)
    engine = make_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            for at, demand in demand_history(capacity, now=now).items():
                store.record_demand(session, at=at, demand=demand)
            session.add_all(job_history(now=now))
        trainer = ForecastTrainer(
            engine,
            clock=lambda: now,
            interval=timedelta(hours=1),
            history=timedelta(days=HISTORY_DAYS),
            demand_retention=timedelta(days=90),
            resolutions={3600: 168 * 3600},
        )
        return trainer.run_once().trained
    finally:
        engine.dispose()
