"""Per-pod GPU usage over a window, aggregated in the database: right-sizing's input.

Each ``workload_usage`` row (a pod's process on a GPU at one sample) is joined with the
GPU's sample at the same instant; activity per row is GPM SM activity where the GPU has it,
the process's SM share otherwise, NVML's coarse utilisation last. One row comes back per
(pod, GPU) with its mean and peak activity and peak memory, so the work stays in the
database whatever the fleet's size.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from optimizer.forecast.rightsizing import SIGNALS, GpuUsage, PodUsage
from optimizer.store.models import Gpu, Sample, WorkloadUsage


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
