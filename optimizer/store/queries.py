"""Read-side repository functions: nodes, GPUs, history, and the audit log.

They return plain frozen dataclasses, never ORM objects, so callers cannot write through
them and nothing lazy-loads after the session closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from optimizer.store.models import (
    AuditEntry,
    Gpu,
    GpuLinkRow,
    Node,
    Rollup,
    Sample,
    TopologyVersion,
)
from optimizer.store.rollups import ROLLUP_LEVELS, bucket_start, pending_samples
from optimizer.summary import GpuState
from shared.report import NodeReport


@dataclass(frozen=True)
class GpuRow:
    """A GPU's facts and its latest sample."""

    uuid: str
    node_name: str
    index: int
    product: str
    memory_bytes: int
    pci_bus_id: str
    numa_node: int | None
    health: str
    clique: str | None
    info: dict[str, Any] | None  # None in listings, which do not read it
    latest_at: datetime | None
    util_ratio: float | None
    memory_used_bytes: int | None
    power_w: float | None
    energy_j: float | None
    temperature_c: float | None
    process_count: int | None
    latest_sample: dict[str, Any] | None


@dataclass(frozen=True)
class NodeRow:
    """A node with its GPUs (by index) and links."""

    name: str
    agent_version: str
    driver_version: str | None
    cuda_version: str | None
    pool: str | None
    host: dict[str, Any] | None
    first_seen: datetime
    last_seen: datetime
    last_collected_at: datetime
    last_sequence: int
    gpus: tuple[GpuRow, ...]
    links: tuple[dict[str, Any], ...]


def _gpu_row(gpu: Gpu, *, detail: bool = True) -> GpuRow:
    return GpuRow(
        uuid=gpu.uuid,
        node_name=gpu.node_name,
        index=gpu.index,
        product=gpu.product,
        memory_bytes=gpu.memory_bytes,
        pci_bus_id=gpu.pci_bus_id,
        numa_node=gpu.numa_node,
        health=gpu.health,
        clique=gpu.clique,
        info=gpu.info if detail else None,
        latest_at=gpu.latest_at,
        util_ratio=gpu.latest_util_ratio,
        memory_used_bytes=gpu.latest_memory_used_bytes,
        power_w=gpu.latest_power_w,
        energy_j=gpu.latest_energy_j,
        temperature_c=gpu.latest_temperature_c,
        process_count=gpu.latest_process_count,
        latest_sample=gpu.latest_sample if detail else None,
    )


def _node_row(
    node: Node, gpus: Sequence[Gpu], links: Sequence[GpuLinkRow], *, detail: bool = True
) -> NodeRow:
    return NodeRow(
        name=node.name,
        agent_version=node.agent_version,
        driver_version=node.driver_version,
        cuda_version=node.cuda_version,
        pool=node.pool,
        host=node.host if detail else None,
        first_seen=node.first_seen,
        last_seen=node.last_seen,
        last_collected_at=node.last_collected_at,
        last_sequence=node.last_sequence,
        gpus=tuple(_gpu_row(g, detail=detail) for g in sorted(gpus, key=lambda g: g.index)),
        links=tuple(
            {
                "gpu_a": lk.gpu_a,
                "gpu_b": lk.gpu_b,
                "nvlink_count": lk.nvlink_count,
                "nvlink_bandwidth_bytes_per_s": lk.nvlink_bandwidth_bytes_per_s,
                "via_nvswitch": lk.via_nvswitch,
                "pcie_level": lk.pcie_level,
            }
            for lk in sorted(links, key=lambda lk: (lk.gpu_a, lk.gpu_b))
        ),
    )


def get_node(session: Session, name: str) -> NodeRow | None:
    """One node with GPUs and links, or None."""
    node = session.get(Node, name)
    if node is None:
        return None
    gpus = session.scalars(select(Gpu).where(Gpu.node_name == name)).all()
    links = session.scalars(select(GpuLinkRow).where(GpuLinkRow.node_name == name)).all()
    return _node_row(node, gpus, links)


def list_nodes(
    session: Session, *, after: str | None = None, limit: int | None = None
) -> list[NodeRow]:
    """Nodes in name order with their GPUs' facts and latest readings (no full GPU info, no
    links: they are the bulk). ``after`` and ``limit`` page through them."""
    query = select(Node).options(defer(Node.host)).order_by(Node.name)
    if after is not None:
        query = query.where(Node.name > after)
    if limit is not None:
        query = query.limit(limit)
    nodes = session.scalars(query).all()
    names = [n.name for n in nodes]
    gpus_by_node: dict[str, list[Gpu]] = {}
    gpus = select(Gpu).options(defer(Gpu.info), defer(Gpu.latest_sample))
    if after is not None or limit is not None:
        gpus = gpus.where(Gpu.node_name.in_(names))
    for gpu in session.scalars(gpus):
        gpus_by_node.setdefault(gpu.node_name, []).append(gpu)
    return [_node_row(n, gpus_by_node.get(n.name, []), [], detail=False) for n in nodes]


@dataclass(frozen=True)
class SeriesPoint:
    """One point of a downsampled GPU history."""

    t: datetime
    samples: int
    util_ratio: float | None
    util_max_ratio: float | None
    memory_used_bytes: float | None
    power_w: float | None
    temperature_max_c: float | None


#: Steps at or above these use the coarser rollup instead of raw samples.
SOURCE_BY_STEP: Final = (("1h", 3600.0), ("5m", 300.0))


def choose_source(*, step: timedelta, start: datetime, raw_since: datetime) -> str:
    """``raw``, ``5m`` or ``1h``: the finest data that is both kept and coarse enough."""
    for level, seconds in SOURCE_BY_STEP:
        if step.total_seconds() >= seconds:
            return level
    return "raw" if start >= raw_since else "5m"


def gpu_series(
    session: Session,
    *,
    uuid: str,
    start: datetime,
    end: datetime,
    step: timedelta,
    source: str,
) -> list[SeriesPoint]:
    """A GPU's history in ``[start, end)``, averaged into buckets of ``step``."""
    buckets: dict[datetime, list[float]] = {}
    # per bucket: samples, util_sum, util_max, mem_sum, power_sum, temp_max, util_n
    if source == "raw":
        rows = session.execute(
            select(
                Sample.at,
                Sample.util_ratio,
                Sample.memory_used_bytes,
                Sample.power_w,
                Sample.temperature_c,
            )
            .where(Sample.gpu_uuid == uuid, Sample.at >= start, Sample.at < end)
            .order_by(Sample.at)
        )
        for at, *values in rows:
            _add(buckets.setdefault(_align(at, start, step), [0, 0.0, 0.0, 0.0, 0.0, 0.0]), values)
    else:
        size = ROLLUP_LEVELS[source]
        rollups = session.scalars(
            select(Rollup)
            .where(
                Rollup.gpu_uuid == uuid,
                Rollup.level == source,
                Rollup.bucket_start >= bucket_start(start, size),
                Rollup.bucket_start < end,
            )
            .order_by(Rollup.bucket_start)
        )
        for r in rollups:
            acc = buckets.setdefault(
                _align(max(r.bucket_start, start), start, step), [0, 0.0, 0.0, 0.0, 0.0, 0.0]
            )
            acc[0] += r.samples
            acc[1] += r.util_sum
            acc[2] = max(acc[2], r.util_max)
            acc[3] += r.memory_used_sum
            acc[4] += r.power_sum_w
            acc[5] = max(acc[5], r.temperature_max_c)
        node = session.scalar(select(Gpu.node_name).where(Gpu.uuid == uuid))
        if node is not None:  # and what is not folded into the rollups yet
            pending = pending_samples(
                session.connection(),
                node=node,
                uuid=uuid,
                level=source,
                start=bucket_start(start, size),
                end=end,
            )
            for bucket, (_, *values) in pending:
                t = _align(max(bucket, start), start, step)
                _add(buckets.setdefault(t, [0, 0.0, 0.0, 0.0, 0.0, 0.0]), values)
    return [
        SeriesPoint(
            t=t,
            samples=int(acc[0]),
            util_ratio=acc[1] / acc[0],
            util_max_ratio=acc[2],
            memory_used_bytes=acc[3] / acc[0],
            power_w=acc[4] / acc[0],
            temperature_max_c=acc[5],
        )
        for t, acc in sorted(buckets.items())
        if acc[0]
    ]


def _add(acc: list[float], values: Sequence[Any]) -> None:
    """Add one sample's (util, memory, power, temperature) to a bucket's ``acc``."""
    util, memory, power, temperature = (v or 0 for v in values)
    acc[0] += 1
    acc[1] += util
    acc[2] = max(acc[2], util)
    acc[3] += memory
    acc[4] += power
    acc[5] = max(acc[5], temperature)


def _align(at: datetime, start: datetime, step: timedelta) -> datetime:
    return start + step * int((at - start) / step)


def gpu_exists(session: Session, uuid: str) -> bool:
    """True when the GPU is known."""
    return session.get(Gpu, uuid) is not None


def record_audit(
    session: Session,
    *,
    at: datetime,
    actor: str,
    verb: str,
    obj: str,
    reason: str,
    outcome: str,
    plan_id: str | None = None,
) -> None:
    """Append one audit entry in the caller's transaction (never a secret in any field)."""
    session.add(
        AuditEntry(
            at=at,
            actor=actor,
            verb=verb,
            object=obj,
            reason=reason,
            outcome=outcome,
            plan_id=plan_id,
        )
    )


def audit_entries(
    session: Session,
    *,
    limit: int = 100,
    before_id: int | None = None,
    actor: str | None = None,
    verb: str | None = None,
    object_prefix: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Audit entries newest first, filtered (each filter optional, all ANDed): older than
    entry ``before_id`` (keyset paging), by exact actor, verb and outcome, by object prefix
    (``pod/ml/``), at or after ``since`` and before ``until``."""
    query = select(AuditEntry)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if verb is not None:
        query = query.where(AuditEntry.verb == verb)
    if outcome is not None:
        query = query.where(AuditEntry.outcome == outcome)
    if object_prefix:
        escaped = object_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(AuditEntry.object.like(f"{escaped}%", escape="\\"))
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit))
    return [
        {
            "id": r.id,
            "at": r.at,
            "actor": r.actor,
            "verb": r.verb,
            "object": r.object,
            "reason": r.reason,
            "outcome": r.outcome,
            "plan_id": r.plan_id,
        }
        for r in rows
    ]


def gpu_states(session: Session, *, idle_util_ratio: float) -> list[GpuState]:
    """GPUs grouped per node by model, health, allocation and activity, counted in SQL."""
    nodes = {
        name: (pool, last_seen)
        for name, pool, last_seen in session.execute(select(Node.name, Node.pool, Node.last_seen))
    }
    allocated = func.coalesce(Gpu.latest_process_count, 0) > 0
    busy = func.coalesce(Gpu.latest_util_ratio, 1.0) >= idle_util_ratio
    rows = session.execute(
        select(
            Gpu.node_name,
            Gpu.product,
            Gpu.health,
            allocated,
            busy,
            func.count(),
            func.sum(Gpu.latest_power_w),
            func.sum(Gpu.latest_energy_j),
        ).group_by(Gpu.node_name, Gpu.product, Gpu.health, allocated, busy)
    )
    return [
        GpuState(
            node_name=name,
            pool=nodes[name][0],
            node_last_seen=nodes[name][1],
            product=product,
            health=health,
            allocated=bool(is_allocated),
            busy=bool(is_busy),
            count=int(count),
            power_w=power,
            energy_j=energy,
        )
        for name, product, health, is_allocated, is_busy, count, power, energy in rows
        if name in nodes
    ]


def latest_topologies(session: Session, *, seen_since: datetime) -> dict[str, NodeReport]:
    """Each node whose agent reported at or after ``seen_since``: its current topology (host,
    GPUs, links) as a topology report without samples. Nodes seen earlier are left out, so a
    caller treats them as stale."""
    rows = session.execute(
        select(Node, TopologyVersion.topology)
        .join(
            TopologyVersion,
            (TopologyVersion.node_name == Node.name)
            & (TopologyVersion.fingerprint == Node.topology_fingerprint),
        )
        .where(Node.last_seen >= seen_since)
    )
    return {
        node.name: NodeReport.model_validate(
            {
                "node_name": node.name,
                "agent_version": node.agent_version,
                "driver_version": node.driver_version,
                "cuda_version": node.cuda_version,
                "sequence": node.last_sequence,
                "collected_at": node.last_collected_at,
                **topology,
            }
        )
        for node, topology in rows
    }


def stale_nodes(session: Session, *, seen_before: datetime) -> set[str]:
    """Nodes whose agent reported once, but not since ``seen_before``."""
    return set(session.scalars(select(Node.name).where(Node.last_seen < seen_before)))
