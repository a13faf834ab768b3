"""The leader's forecasting jobs: demand samples from each cycle, forecasts on a schedule.

:class:`DemandRecorder` writes each scope's capacity, allocated and pending GPUs (from the
cycle's snapshot) at most once per ``demand_sample_s``. :class:`ForecastTrainer` reads the
recent history of every scope and metric, forecasts it at each resolution and stores the
result with the models chosen and their validation scores; the API serves the stored
forecasts, so a request never trains. Retraining runs in its own thread (a month of
history takes seconds per scope, which the scheduling cycle must not wait for). One scope
that cannot be forecast is logged and skipped; the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import structlog
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from optimizer.forecast.demand import CLUSTER, demand_by_scope
from optimizer.forecast.predict import forecast
from optimizer.forecast.series import Series
from optimizer.planner.plan import ClusterSnapshot
from optimizer.store import forecasts as store
from optimizer.store.forecasts import RESOLUTIONS
from optimizer.store.models import Gpu, Node

log = structlog.get_logger(__name__)


#: The most steps a series is trained on: a week at 5 minutes, twelve weeks hourly (more
#: history than that costs time and changes little: the models look a week back at most).
MAX_STEPS: Final = 2016


class DemandRecorder:
    """Writes the demand of every scope a snapshot shows, at most once per interval."""

    def __init__(
        self, engine: Engine, *, clock: Callable[[], datetime], interval: timedelta
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._interval = interval
        self._last: datetime | None = None

    def maybe_record(self, snapshot: ClusterSnapshot) -> bool:
        """Record now if the interval has passed; a database error is logged, not raised
        (the cycle goes on; the next call tries again)."""
        now = self._clock()
        if self._interval <= timedelta(0):
            return False
        if self._last is not None and now - self._last < self._interval:
            return False
        demand = demand_by_scope(snapshot)
        try:
            with Session(self._engine) as session, session.begin():
                store.record_demand(session, at=now, demand=demand)
        except SQLAlchemyError as error:
            log.warning("demand not recorded", error=type(error).__name__)
            return False
        self._last = now
        return True


@dataclass
class TrainingReport:
    """What one retraining did."""

    trained: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0


def forecast_payload(
    *, metric: str, scope: str, series: Series, horizon: int, capacity: float | None, seed: int
) -> dict[str, Any]:
    """The stored (and served) form of one forecast."""
    seen = np.flatnonzero(~np.isnan(series.values))
    if not len(seen):
        raise ValueError("no observation in the window")
    last_seen = int(seen[-1])
    result = forecast(series, horizon=horizon, seed=seed)
    return {
        "metric": metric,
        "scope": scope,
        "step_s": series.step_s,
        "history": {
            "start": _iso(series.start_s),
            "steps": len(series),
            "gaps": series.gaps,
            "last_observed": _iso(series.time_s(last_seen)),
            "last_value": float(series.values[last_seen]),
        },
        "capacity_gpus": capacity,
        "points": [
            {"at": _iso(p.time_s), "p10": p.p10, "p50": p.p50, "p90": p.p90} for p in result.points
        ],
        "models": [
            {
                "horizon_steps": a.horizon,
                "model": a.model,
                "reason": a.reason,
                "validation_mae": a.validation_mae,
                "validation_mae_by_model": a.scores,
            }
            for a in result.anchors
        ],
    }


class ForecastTrainer:
    """Retrains every scope's forecasts when due.

    Args:
        engine: the optimizer's database.
        clock: the current time (injected: tests drive retraining without sleeping).
        interval: how often to retrain (zero: never).
        history: how much of the newest history to read.
        demand_retention: demand samples older than this are deleted after a retraining.
        resolutions: step (s) -> horizon (s) of the forecasts kept.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime],
        interval: timedelta,
        history: timedelta,
        demand_retention: timedelta,
        resolutions: Mapping[int, int] = RESOLUTIONS,
        seed: int = 0,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self.interval = interval
        self._history = history
        self._retention = demand_retention
        self._resolutions = dict(resolutions)
        self._seed = seed
        self._last: datetime | None = None

    def due(self) -> bool:
        if self.interval <= timedelta(0):
            return False
        return self._last is None or self._clock() - self._last >= self.interval

    def run_once(self) -> TrainingReport:
        """Forecast every scope of both metrics at every resolution, store the results and
        prune old rows; returns what was trained and what was skipped, with why."""
        started = time.perf_counter()
        now = self._clock()
        since = now - self._history
        report = TrainingReport()
        with Session(self._engine) as session:
            jobs = [("gpu_demand", s) for s in store.demand_scopes(session, since=since)]
            jobs += [("gpu_activity", s) for s in _activity_scopes(session)]
        for metric, scope in jobs:
            for step_s, horizon_s in self._resolutions.items():
                name = store.subject(metric, scope, step_s)
                try:
                    why = self._train(metric, scope, step_s, horizon_s, since=since, now=now)
                except (ValueError, SQLAlchemyError) as error:
                    why = f"{type(error).__name__}: {error}"
                    log.warning("forecast skipped", subject=name, error=why)
                if why:
                    report.skipped[name] = why
                else:
                    report.trained.append(name)
        try:
            with Session(self._engine) as session, session.begin():
                store.prune(
                    session,
                    demand_before=now - self._retention,
                    forecasts_before=now - max(self.interval * 24, timedelta(days=1)),
                )
        except SQLAlchemyError as error:
            log.warning("forecast history not pruned", error=type(error).__name__)
        self._last = now
        report.elapsed_s = time.perf_counter() - started
        log.info(
            "forecasts retrained",
            trained=len(report.trained),
            skipped=len(report.skipped),
            elapsed_s=round(report.elapsed_s, 2),
        )
        return report

    def _train(
        self,
        metric: str,
        scope: str,
        step_s: int,
        horizon_s: int,
        *,
        since: datetime,
        now: datetime,
    ) -> str:
        """Train and store one forecast; returns why not ("" when stored)."""
        with Session(self._engine) as session:
            read = store.demand_series if metric == "gpu_demand" else store.activity_series
            # up to the last whole step: the one holding "now" is still filling
            until = now - timedelta(seconds=step_s)
            since = max(since, until - timedelta(seconds=step_s * MAX_STEPS))
            series = read(session, scope=scope, step_s=step_s, since=since, until=until)
            capacity = store.capacity_now(session, scope=scope) if metric == "gpu_demand" else None
        if series is None:
            return "no history in the window"
        payload = forecast_payload(
            metric=metric,
            scope=scope,
            series=series,
            horizon=max(1, horizon_s // step_s),
            capacity=capacity,
            seed=self._seed,
        )
        with Session(self._engine) as session, session.begin():
            store.save_forecast(
                session,
                metric=metric,
                scope=scope,
                step_s=step_s,
                created_at=now,
                horizon_s=horizon_s,
                payload=payload,
            )
        return ""

    def run(self, stop: threading.Event, *, is_leader: Callable[[], bool], poll_s: float) -> None:
        """Retrain whenever due while this replica leads, until ``stop`` is set."""
        while not stop.is_set():
            if is_leader() and self.due():
                try:
                    self.run_once()
                except Exception:
                    log.exception("forecast retraining failed; the next one starts afresh")
            stop.wait(poll_s)


def _activity_scopes(session: Session) -> list[str]:
    models = session.scalars(select(Gpu.product).distinct()).all()
    pools = session.scalars(select(Node.pool).where(Node.pool.is_not(None)).distinct()).all()
    if not models:
        return []
    return [
        CLUSTER,
        *(f"model/{m}" for m in sorted(models)),
        *(f"pool/{p}" for p in sorted(p for p in pools if p)),
    ]


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")
