"""Retraining every scope of a 1,000-node cluster's month of demand history, and serving.

Run: ``.venv/bin/python -m bench.forecast_training [--write]``.

A SQLite store gets 30 days of demand samples once a minute (the leader's default
``STOWAGE_DEMAND_SAMPLE_S``) for the scopes a 1,000-node cluster would have: the cluster,
8 pools, 4 GPU models, 20 queues and 40 namespaces (73 scopes; a daily and a weekly cycle,
a trend and noise, seeded). The real ``ForecastTrainer`` then retrains them all once (both
resolutions: 6 h at 5 minutes, 7 d hourly) in this process, on one core, and
``GET /v1/forecasts`` is timed on the stored result through the real app. GPU-activity
scopes (from per-GPU rollups) are not part of the run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import insert
from threadpoolctl import threadpool_limits

from bench.docs import replace_section
from optimizer.api.app import create_app
from optimizer.controller.forecasting import ForecastTrainer
from optimizer.settings import OptimizerSettings
from optimizer.store import migrate
from optimizer.store.engine import make_engine
from optimizer.store.models import DemandSample

NOW: Final = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAYS: Final = 30
SCOPES: Final = (
    ["cluster"]
    + [f"pool/pool-{i}" for i in range(8)]
    + [f"model/model-{i}" for i in range(4)]
    + [f"queue/team-{i}" for i in range(20)]
    + [f"namespace/ns-{i}" for i in range(40)]
)
BEGIN: Final = "<!-- forecast-training-benchmark:begin -->"
END: Final = "<!-- forecast-training-benchmark:end -->"


def fill(database_url: str) -> int:
    """Write the month of samples; returns the rows written."""
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    rng = np.random.default_rng(11)
    minutes = DAYS * 24 * 60
    start = NOW - timedelta(minutes=minutes)
    hours = np.arange(minutes) / 60
    rows = 0
    with engine.begin() as connection:
        for k, scope in enumerate(SCOPES):
            size = 4000.0 if scope == "cluster" else 400.0 / (1 + k % 5)
            shape = (
                0.6
                + 0.2 * np.sin(2 * math.pi * (hours - 8 - k) / 24)
                + 0.1 * np.sin(2 * math.pi * hours / 168)
                + 0.05 * hours / hours[-1]
            )
            demand = np.maximum(size * shape + rng.normal(0, 0.02 * size, minutes), 0)
            batch = [
                {
                    "scope": scope,
                    "at": start + timedelta(minutes=int(m)),
                    "capacity_gpus": size,
                    "allocated_gpus": float(min(d, size)),
                    "pending_gpus": float(max(d - size, 0)),
                }
                for m, d in enumerate(demand)
            ]
            connection.execute(insert(DemandSample), batch)
            rows += len(batch)
    engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    # one core, as the target says: this thread and every thread pool it will start
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with threadpool_limits(1), tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        started = time.perf_counter()
        rows = fill(url)
        filled_s = time.perf_counter() - started
        engine = make_engine(url)
        trainer = ForecastTrainer(
            engine,
            clock=lambda: NOW,
            interval=timedelta(hours=1),
            history=timedelta(days=35),
            demand_retention=timedelta(days=90),
        )
        report = trainer.run_once()
        settings = OptimizerSettings(database_url=url, auth="none")
        app = create_app(settings, authenticator=None, engine=engine, clock=lambda: NOW)
        with TestClient(app) as client:
            latencies = []
            for k in range(51):
                scope = SCOPES[k % len(SCOPES)]
                begun = time.perf_counter()
                answer = client.get(
                    "/v1/forecasts", params={"scope": scope, "horizon": "7d", "step": "1h"}
                )
                latencies.append(time.perf_counter() - begun)  # the first: a cold start
                assert answer.status_code == 200, answer.text
        engine.dispose()
    lines = [
        "Command: `.venv/bin/python -m bench.forecast_training --write`. Machine: "
        f"{platform.machine()}, Python {platform.python_version()}, one process.",
        "",
        "| what | figure |",
        "|---|---:|",
        f"| demand samples stored (73 scopes, 30 days, one a minute) | {rows:,} (written in "
        f"{filled_s:.0f} s) |",
        f"| forecasts retrained (73 scopes x 2 resolutions) | {len(report.trained)} "
        f"({len(report.skipped)} skipped) |",
        f"| retraining all of them, one core | {report.elapsed_s:.1f} s "
        f"({report.elapsed_s / max(len(report.trained), 1):.2f} s each) |",
        f"| `GET /v1/forecasts` (7 d hourly), first request after start | "
        f"{latencies[0] * 1000:.1f} ms |",
        f"| `GET /v1/forecasts`, median and slowest of the next 50 | "
        f"{statistics.median(latencies[1:]) * 1000:.1f} ms, {max(latencies[1:]) * 1000:.1f} ms |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section(
            BEGIN,
            END,
            text,
            heading="Forecasts: retraining a 1,000-node cluster's scopes, serving them",
        )


if __name__ == "__main__":
    main()
