"""Run times learned from the gangs that finished here: the planner's duration predictions
where a job declares no ``stowage.io/runtime-estimate``.

The leader records each managed gang that ends (``job_runs``: queue, GPUs, start, end). The
prediction for a job is the replay simulator's :class:`~optimizer.simulate.replay.History`
rule: the median run time of the last finished jobs of the same queue and GPU count (else
the same queue, else all), conditioned on how long it has run already; nothing is predicted
before any job has finished. Never read from the future: only ended runs count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from optimizer.simulate.replay import History, TraceJob
from optimizer.store.forecasts import finished_runs
from optimizer.store.models import JobRun

#: How far back finished runs count, and how often the leader rereads them.
LOOKBACK: Final = timedelta(days=30)
REFRESH: Final = timedelta(minutes=5)

#: (queue, GPUs, seconds run so far) -> predicted remaining seconds, or None.
Predict = Callable[[str | None, float, float], float | None]


def history_of(runs: list[JobRun]) -> History:
    """A :class:`History` fed with ``runs`` in the order they ended."""
    history = History()
    for index, run in enumerate(sorted(runs, key=lambda r: r.finished_at)):
        if run.duration_s > 0:
            gpus = max(1, round(run.gpus))
            history.ended(TraceJob(index, 0.0, run.duration_s, gpus, run.queue or ""))
    return history


def predictor(history: History) -> Predict:
    """The remaining run time of a job of ``queue`` on ``gpus`` GPUs that has run ``ran_s``."""

    def predict(queue: str | None, gpus: float, ran_s: float) -> float | None:
        job = TraceJob(-1, 0.0, 0.0, max(1, round(gpus)), queue or "")
        if history.durations(job) is None:
            return None
        return history.predict(job, ran_s)

    return predict


class DurationModel:
    """The leader's predictor, reread from the store every :data:`REFRESH`."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._clock = clock
        self._loaded: datetime | None = None
        self._predict: Predict | None = None

    def current(self) -> Predict | None:
        """The predictor (None until a run has finished); a database error keeps the last."""
        now = self._clock()
        if self._loaded is None or now - self._loaded >= REFRESH:
            try:
                with Session(self._engine) as session:
                    runs = finished_runs(session, since=now - LOOKBACK)
            except SQLAlchemyError:
                return self._predict
            self._loaded = now
            self._predict = predictor(history_of(runs)) if runs else None
        return self._predict
