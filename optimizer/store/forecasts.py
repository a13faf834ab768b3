"""Forecasting's tables: demand samples in, series out, forecasts stored and read back.

Series come from two places: ``demand_samples`` (allocated + pending GPUs per scope, the
controller's view) and ``rollups`` (mean GPU utilisation, the agents' view; per cluster,
pool and GPU model). Both are resampled to the step asked, gaps marked (NaN), up to the
time asked, so that a scope that went quiet ends in gaps rather than in stale values.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Integer, delete, func, literal, select, union_all
from sqlalchemy.orm import Session

from optimizer.forecast.demand import CLUSTER, Demand
from optimizer.forecast.series import Series, resample
from optimizer.store.models import DemandSample, Forecast, Gpu, JobRun, Node, Rollup
from optimizer.store.rollups import pending_subquery

METRICS: Final = ("gpu_demand", "gpu_activity")
#: Step (s) -> horizon (s) of the stored forecasts.
RESOLUTIONS: Final = {300: 6 * 3600, 3600: 168 * 3600}


def record_demand(session: Session, *, at: datetime, demand: Mapping[str, Demand]) -> None:
    """One row per scope at ``at`` (the caller commits); a second call at the same instant
    replaces nothing and raises (the primary key), so callers sample on a schedule."""
    session.add_all(
        DemandSample(
            scope=scope[:320],
            at=at,
            capacity_gpus=d.capacity_gpus,
            allocated_gpus=d.allocated_gpus,
            pending_gpus=d.pending_gpus,
        )
        for scope, d in demand.items()
    )


def demand_scopes(session: Session, *, since: datetime) -> list[str]:
    """Scopes with a demand sample since ``since``."""
    rows = session.scalars(
        select(DemandSample.scope).where(DemandSample.at >= since).distinct()
    ).all()
    return sorted(rows)


def epoch_s(session: Session, column: Any) -> Any:
    """Seconds since the epoch of a UTC datetime column, in SQL (SQLite stores it naive)."""
    if session.get_bind().dialect.name == "sqlite":
        return func.cast(func.strftime("%s", column), Integer)
    return func.extract("epoch", column)


def demand_series(
    session: Session, *, scope: str, step_s: int, since: datetime, until: datetime
) -> Series | None:
    """Allocated + pending GPUs of ``scope``, the mean per step (averaged in the database:
    one row per step comes back, not one per sample); None: no sample there."""
    bucket = func.floor(epoch_s(session, DemandSample.at) / step_s)
    rows = session.execute(
        select(bucket, func.avg(DemandSample.allocated_gpus + DemandSample.pending_gpus))
        .where(DemandSample.scope == scope, DemandSample.at >= since, DemandSample.at <= until)
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    if not rows:
        return None
    return resample(
        [float(r[0]) * step_s for r in rows],
        [float(r[1]) for r in rows],
        step_s=step_s,
        until_s=until.timestamp(),
    )


def capacity_now(session: Session, *, scope: str) -> float | None:
    """The scope's GPU capacity at its latest demand sample."""
    row = session.execute(
        select(DemandSample.capacity_gpus)
        .where(DemandSample.scope == scope)
        .order_by(DemandSample.at.desc())
        .limit(1)
    ).first()
    return None if row is None else float(row[0])


def latest_demand(session: Session) -> dict[str, float]:
    """Each scope's demand (allocated + pending GPUs) at its newest sample."""
    newest = (
        select(DemandSample.scope, func.max(DemandSample.at).label("at"))
        .group_by(DemandSample.scope)
        .subquery()
    )
    rows = session.execute(
        select(DemandSample.scope, DemandSample.allocated_gpus + DemandSample.pending_gpus).join(
            newest, (DemandSample.scope == newest.c.scope) & (DemandSample.at == newest.c.at)
        )
    ).all()
    return {str(scope): float(value) for scope, value in rows}


def activity_series(
    session: Session, *, scope: str, step_s: int, since: datetime, until: datetime
) -> Series | None:
    """Mean utilisation (0-1) of the scope's GPUs from the rollups and the samples not
    folded into them yet (5-minute buckets for steps under an hour, hourly ones
    otherwise); scopes: cluster, pool/…, model/…."""
    level = "5m" if step_s < 3600 else "1h"
    pending = pending_subquery(session.get_bind().dialect.name)
    bucket = pending.c[f"bucket_{level}"]
    both = union_all(
        select(Rollup.gpu_uuid, Rollup.bucket_start, Rollup.util_sum, Rollup.samples).where(
            Rollup.level == level, Rollup.bucket_start >= since, Rollup.bucket_start <= until
        ),
        select(pending.c.gpu_uuid, bucket, pending.c.util, literal(1)).where(
            bucket >= since, bucket <= until
        ),
    ).subquery()
    query = (
        select(both.c.bucket_start, func.sum(both.c.util_sum), func.sum(both.c.samples))
        .group_by(both.c.bucket_start)
        .order_by(both.c.bucket_start)
    )
    kind, _, value = scope.partition("/")
    if kind == "model":
        query = query.join(Gpu, Gpu.uuid == both.c.gpu_uuid).where(Gpu.product == value)
    elif kind == "pool":
        query = (
            query.join(Gpu, Gpu.uuid == both.c.gpu_uuid)
            .join(Node, Node.name == Gpu.node_name)
            .where(Node.pool == value)
        )
    elif scope != CLUSTER:
        raise ValueError(f"GPU activity is kept per cluster, pool and model, not {kind!r}")
    rows = [r for r in session.execute(query).all() if r[2]]
    if not rows:
        return None
    return resample(
        [r[0].timestamp() for r in rows],
        [float(r[1]) / float(r[2]) for r in rows],
        step_s=step_s,
        until_s=until.timestamp(),
    )


def finished_runs(session: Session, *, since: datetime) -> list[JobRun]:
    """The job runs that ended since ``since``, in the order they ended."""
    query = select(JobRun).where(JobRun.finished_at >= since).order_by(JobRun.finished_at)
    return list(session.scalars(query))


def subject(metric: str, scope: str, step_s: int) -> str:
    return f"{metric}:{scope}@{step_s}"[:256]


def save_forecast(
    session: Session,
    *,
    metric: str,
    scope: str,
    step_s: int,
    created_at: datetime,
    horizon_s: float,
    payload: dict[str, Any],
) -> None:
    session.add(
        Forecast(
            subject=subject(metric, scope, step_s),
            created_at=created_at,
            horizon_s=horizon_s,
            payload=payload,
        )
    )


def latest_forecasts(session: Session) -> list[Forecast]:
    """The newest stored forecast of every subject."""
    newest = (
        select(Forecast.subject, func.max(Forecast.created_at).label("at"))
        .group_by(Forecast.subject)
        .subquery()
    )
    return list(
        session.scalars(
            select(Forecast).join(
                newest,
                (Forecast.subject == newest.c.subject) & (Forecast.created_at == newest.c.at),
            )
        )
    )


def forecast_scopes(session: Session, *, metric: str, step_s: int, kind: str) -> list[str]:
    """The scopes of one kind (``model``, ``pool``, …) with a stored forecast of ``metric``
    at ``step_s``, sorted."""
    prefix, suffix = f"{metric}:{kind}/", f"@{step_s}"
    subjects = session.scalars(
        select(Forecast.subject).where(Forecast.subject.startswith(prefix)).distinct()
    )
    return sorted(
        s.removeprefix(f"{metric}:").removesuffix(suffix) for s in subjects if s.endswith(suffix)
    )


def latest_forecast(session: Session, *, metric: str, scope: str, step_s: int) -> Forecast | None:
    """The newest stored forecast of this metric, scope and step; None: none yet."""
    return session.scalars(
        select(Forecast)
        .where(Forecast.subject == subject(metric, scope, step_s))
        .order_by(Forecast.created_at.desc())
        .limit(1)
    ).first()


def prune(session: Session, *, demand_before: datetime, forecasts_before: datetime) -> int:
    """Delete demand samples and job runs older than ``demand_before`` and forecasts older
    than ``forecasts_before``; returns the rows gone."""
    statements = (
        delete(DemandSample).where(DemandSample.at < demand_before),
        delete(JobRun).where(JobRun.finished_at < demand_before),
        delete(Forecast).where(Forecast.created_at < forecasts_before),
    )
    gone = 0
    for statement in statements:
        result: Any = session.execute(statement)
        gone += int(result.rowcount or 0)
    return gone
