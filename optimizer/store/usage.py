"""Per-pod GPU, CPU and memory usage over a window, aggregated in the database, and the
workloads owning the pods: right-sizing's input.

Each ``workload_usage`` row (a pod's process on a GPU at one sample) is joined with the
GPU's sample at the same instant; activity per row is GPM SM activity where the GPU has it,
the process's SM share otherwise, NVML's coarse utilisation last. One row comes back per
(pod, GPU) with its mean and peak activity and peak memory, so the work stays in the
database whatever the fleet's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import case, delete, func, select, tuple_
from sqlalchemy.orm import Session

from optimizer.forecast.resources import ContainerSeries, recommend_resources
from optimizer.forecast.rightsizing import (
    SIGNALS,
    GpuUsage,
    PodUsage,
    Recommendation,
    Workload,
    recommend,
)
from optimizer.store.forecasts import epoch_s
from optimizer.store.models import ContainerUsageRow, Gpu, Sample, WorkloadPod, WorkloadUsage

#: CPU and memory samples are bucketed to this many seconds (mean CPU, peak memory).
CONTAINER_BUCKET_S: Final = 300
#: (namespace, pod) -> its workload and its containers' requests.
PodOwners = Mapping[tuple[str, str], tuple[Workload, Mapping[str, Mapping[str, float]]]]


def pod_gpu_usage(session: Session, *, since: datetime, until: datetime) -> list[PodUsage]:
    """Every attributed pod's GPUs between ``since`` and ``until``."""
    u, s = WorkloadUsage, Sample
    activity = func.coalesce(s.sm_active_ratio, u.sm_util_ratio, s.util_ratio)
    # the rank in SIGNALS; a GPU's aggregate names the best it had (a GPM GPU's first read,
    # with no GPM sample to compare yet, falls back to the process share)
    signal = case(
        (s.sm_active_ratio.is_not(None), 0),
        (u.sm_util_ratio.is_not(None), 1),
        else_=2,
    )
    rows = session.execute(
        select(
            u.namespace,
            u.pod,
            u.gpu_uuid,
            func.count(),
            func.min(u.at),
            func.max(u.at),
            func.avg(activity),
            func.max(activity),
            func.min(signal),
            func.max(u.memory_used_bytes),
            func.max(Gpu.product),
            func.max(Gpu.memory_bytes),
        )
        .join(s, (s.gpu_uuid == u.gpu_uuid) & (s.at == u.at) & (s.node_name == u.node_name))
        .join(Gpu, Gpu.uuid == u.gpu_uuid, isouter=True)
        .where(u.at >= since, u.at <= until, u.namespace.is_not(None), u.pod.is_not(None))
        .group_by(u.namespace, u.pod, u.gpu_uuid)
        .order_by(u.namespace, u.pod, u.gpu_uuid)
    ).all()
    pods: dict[tuple[str, str], list[GpuUsage]] = {}
    for ns, pod, uuid, count, first, last, mean, peak, rank, memory, product, total in rows:
        if mean is None:
            continue  # no activity reading at all for this pod on this GPU
        pods.setdefault((ns, pod), []).append(
            GpuUsage(
                gpu_uuid=uuid,
                product=product or "unknown",
                memory_bytes=int(total or 0),
                samples=int(count),
                first_s=first.timestamp(),
                last_s=last.timestamp(),
                activity_mean=float(mean),
                activity_max=float(peak),
                signal=SIGNALS[int(rank)],
                memory_peak_bytes=int(memory or 0),
            )
        )
    return [PodUsage(ns, pod, tuple(gpus)) for (ns, pod), gpus in pods.items()]


def record_workload_pods(
    session: Session,
    pods: Mapping[tuple[str, str], tuple[Workload, Mapping[str, Any]]],
    *,
    now: datetime,
) -> None:
    """Upsert each (namespace, pod) -> (its workload, its containers' requests), seen ``now``."""
    keys = list(pods)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        session.execute(
            delete(WorkloadPod).where(tuple_(WorkloadPod.namespace, WorkloadPod.pod).in_(chunk))
        )
        session.add_all(
            WorkloadPod(
                namespace=ns,
                pod=pod,
                owner_kind=pods[ns, pod][0].kind,
                owner_api_version=pods[ns, pod][0].api_version,
                owner_name=pods[ns, pod][0].name,
                requests=dict(pods[ns, pod][1]),
                seen_at=now,
            )
            for ns, pod in chunk
        )
        session.flush()


def workload_pods(
    session: Session, *, since: datetime
) -> dict[tuple[str, str], tuple[Workload, dict[str, Any]]]:
    """(namespace, pod) -> its workload and requests, for every pod the leader saw since
    ``since``."""
    rows = session.execute(
        select(
            WorkloadPod.namespace,
            WorkloadPod.pod,
            WorkloadPod.owner_kind,
            WorkloadPod.owner_name,
            WorkloadPod.owner_api_version,
            WorkloadPod.requests,
        ).where(WorkloadPod.seen_at >= since)
    ).all()
    return {
        (ns, pod): (Workload(kind, name, api), dict(requests or {}))
        for ns, pod, kind, name, api, requests in rows
    }


def container_series(
    session: Session, *, since: datetime, until: datetime
) -> list[ContainerSeries]:
    """Each attributed container's CPU (mean) and memory (peak) per 5-minute bucket."""
    c = ContainerUsageRow
    bucket = func.floor(epoch_s(session, c.at) / CONTAINER_BUCKET_S)
    rows = session.execute(
        select(
            c.namespace, c.pod, c.container, bucket, func.avg(c.cpu_cores), func.max(c.memory_bytes)
        )
        .where(
            c.at >= since,
            c.at <= until,
            c.namespace.is_not(None),
            c.pod.is_not(None),
            c.container.is_not(None),
        )
        .group_by(c.namespace, c.pod, c.container, bucket)
        .order_by(c.namespace, c.pod, c.container, bucket)
    ).all()
    points: dict[tuple[str, str, str], list[tuple[float, float | None, float | None]]] = {}
    for ns, pod, container, start, cpu, memory in rows:
        points.setdefault((ns, pod, container), []).append(
            (
                (float(start) + 0.5) * CONTAINER_BUCKET_S,
                None if cpu is None else float(cpu),
                None if memory is None else float(memory),
            )
        )
    return [
        ContainerSeries(
            ns,
            pod,
            container,
            tuple(t for t, _, _ in found),
            tuple(v for _, v, _ in found),
            tuple(m for _, _, m in found),
        )
        for (ns, pod, container), found in points.items()
    ]


def recommendations(
    session: Session,
    *,
    now: datetime,
    window: timedelta,
    min_window: timedelta,
    pods: PodOwners | None = None,
) -> list[Recommendation]:
    """Every right-sizing recommendation over the last ``window``: GPUs per workload, then
    CPU and memory per workload and container. ``pods``: the leader's own view; by default
    the one it last recorded."""
    since = now - window
    if pods is None:
        pods = workload_pods(session, since=since)
    gpus = recommend(
        pod_gpu_usage(session, since=since, until=now),
        min_window_s=min_window.total_seconds(),
        owners={key: workload for key, (workload, _) in pods.items()},
    )
    resources = recommend_resources(
        container_series(session, since=since, until=now),
        now_s=now.timestamp(),
        min_window_s=min_window.total_seconds(),
        pods=pods,
    )
    return gpus + resources


def namespace_gpu_usage(
    session: Session, *, since: datetime, until: datetime
) -> dict[str, tuple[float, float]]:
    """Namespace -> (GPU energy in joules, GPU-seconds) between ``since`` and ``until``.

    Each GPU's interval between two consecutive samples is charged to the namespace of the
    pod whose process ran on it at the interval's end: the energy counter's increase (a
    decrease, a driver reload, counts nothing) and the interval's length. A GPU two
    namespaces share at one sample is charged to both.
    """
    s = Sample
    previous_energy = func.lag(s.energy_j).over(partition_by=s.gpu_uuid, order_by=s.at)
    previous_at = func.lag(epoch_s(session, s.at)).over(partition_by=s.gpu_uuid, order_by=s.at)
    steps = (
        select(
            s.gpu_uuid.label("gpu_uuid"),
            s.node_name.label("node_name"),
            s.at.label("at"),
            (s.energy_j - previous_energy).label("joules"),
            (epoch_s(session, s.at) - previous_at).label("seconds"),
        )
        .where(s.at >= since, s.at <= until)
        .subquery()
    )
    owners = (
        select(
            WorkloadUsage.gpu_uuid,
            WorkloadUsage.node_name,
            WorkloadUsage.at,
            WorkloadUsage.namespace,
        )
        .where(
            WorkloadUsage.at >= since,
            WorkloadUsage.at <= until,
            WorkloadUsage.namespace.is_not(None),
        )
        .distinct()
        .subquery()
    )
    joules = case((steps.c.joules >= 0, steps.c.joules), else_=0.0)
    rows = session.execute(
        select(owners.c.namespace, func.sum(joules), func.sum(steps.c.seconds))
        .join(
            steps,
            (steps.c.gpu_uuid == owners.c.gpu_uuid)
            & (steps.c.at == owners.c.at)
            & (steps.c.node_name == owners.c.node_name),
        )
        .where(steps.c.seconds.is_not(None))
        .group_by(owners.c.namespace)
    ).all()
    return {str(ns): (float(j or 0.0), float(sec or 0.0)) for ns, j, sec in rows}
