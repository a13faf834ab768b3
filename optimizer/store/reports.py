"""Storing node reports: one report, one transaction, stored once.

:func:`ingest_report` records a receipt keyed by (node, sequence, collected_at) first; a
resent report finds its receipt and changes nothing. Topology is stored when its fingerprint
changes; samples, per-pod usage and the 5-minute and 1-hour rollups always. The caller owns
the transaction: commit on success, roll back on any error, so nothing is half-written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Final

from sqlalchemy import Table, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from optimizer.store.models import (
    AuditEntry,
    Gpu,
    GpuLinkRow,
    Node,
    ReportReceipt,
    Rollup,
    Sample,
    TopologyVersion,
    WorkloadUsage,
)
from shared.report import GpuSample, NodeReport

#: Rollup levels and their bucket sizes.
ROLLUP_LEVELS: Final = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1)}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Core tables for the hot path: executemany without ORM bookkeeping.
_GPUS: Final[Table] = Gpu.__table__  # type: ignore[assignment]
_ROLLUPS: Final[Table] = Rollup.__table__  # type: ignore[assignment]
_SAMPLES: Final[Table] = Sample.__table__  # type: ignore[assignment]
_USAGE: Final[Table] = WorkloadUsage.__table__  # type: ignore[assignment]


class TopologyUnknownError(LookupError):
    """A samples report for a node (or GPU) whose topology the optimizer does not have."""


class GpuOwnedError(ValueError):
    """A topology report claims GPUs another, live node owns (a GPU UUID belongs to one
    node at a time); nothing of the report is written."""

    def __init__(self, claims: Sequence[tuple[str, str]]) -> None:
        self.claims = tuple(claims)  # (uuid, owner)
        owned = ", ".join(f"{uuid} (node {owner})" for uuid, owner in self.claims)
        super().__init__(f"GPUs owned by another node that still reports: {owned}")


#: A GPU may move to another node once its owner has not reported for this long.
DEFAULT_MOVE_AFTER: Final = timedelta(minutes=10)


@dataclass(frozen=True)
class IngestResult:
    """What storing a report did."""

    stored: bool  # False: a resend of a report already stored
    topology_changed: bool
    samples: int


def _insert(session: Session, table: Any) -> postgresql.Insert | sqlite.Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def bucket_start(at: datetime, size: timedelta) -> datetime:
    """The start of the ``size`` bucket containing ``at`` (aligned to the Unix epoch)."""
    seconds = int(size.total_seconds())
    offset = int((at - _EPOCH).total_seconds()) // seconds * seconds
    return _EPOCH + timedelta(seconds=offset)


def ingest_report(
    session: Session,
    report: NodeReport,
    *,
    received_at: datetime,
    pool: str | None = None,
    move_after: timedelta = DEFAULT_MOVE_AFTER,
) -> IngestResult:
    """Store ``report`` in the caller's transaction; ``pool`` is the node's configured pool.

    A GPU UUID belongs to one node: a topology report claiming a GPU of another node is
    refused unless that node has not reported for ``move_after`` (the GPU moved to another
    server), and then the move is audited.

    Raises:
        TopologyUnknownError: a samples report for an unknown node or GPU (the agent must
            resend its topology); nothing is written.
        GpuOwnedError: the report claims GPUs of a live node; nothing is written.
    """
    receipt = (
        _insert(session, ReportReceipt)
        .values(
            node_name=report.node_name,
            sequence=report.sequence,
            collected_at=report.collected_at,
            received_at=received_at,
        )
        .on_conflict_do_nothing()
        .returning(ReportReceipt.sequence)
    )
    if session.execute(receipt).scalar_one_or_none() is None:  # the receipt exists: a resend
        return IngestResult(stored=False, topology_changed=False, samples=0)
    node = session.get(Node, report.node_name, with_for_update=True)
    if node is None and not report.is_topology_report:
        raise TopologyUnknownError(f"node {report.node_name} has sent no topology yet")
    if node is None:
        node = Node(
            name=report.node_name,
            agent_version=report.agent_version,
            first_seen=received_at,
            last_seen=received_at,
            last_collected_at=report.collected_at,
            last_sequence=report.sequence,
        )
        session.add(node)
    changed = False
    if report.is_topology_report:
        fingerprint = report.topology_fingerprint()
        if fingerprint != node.topology_fingerprint:
            # an unchanged topology claims nothing new: a move away from this node clears
            # its fingerprint, so its next topology report is checked here again
            _claim_gpus(session, report, received_at=received_at, move_after=move_after)
            _store_topology(session, report, fingerprint=fingerprint, received_at=received_at)
            node.topology_fingerprint = fingerprint
            node.host = report.host.model_dump(mode="json") if report.host else None
            changed = True
        node.driver_version = report.driver_version
        node.cuda_version = report.cuda_version
    if report.collected_at >= node.last_collected_at:
        node.last_collected_at = report.collected_at
        node.last_sequence = report.sequence
        node.agent_version = report.agent_version
    node.last_seen = max(node.last_seen, received_at)
    node.pool = pool
    session.flush()
    _store_samples(session, report)
    return IngestResult(stored=True, topology_changed=changed, samples=len(report.samples))


def _claim_gpus(
    session: Session, report: NodeReport, *, received_at: datetime, move_after: timedelta
) -> None:
    """Refuse GPUs a live node owns; move (and audit) those of a node gone quiet."""
    uuids = [gpu.uuid for gpu in report.gpus]
    if not uuids:
        return
    owners = session.execute(
        select(Gpu.uuid, Gpu.node_name, Node.last_seen)
        .join(Node, Node.name == Gpu.node_name)
        .where(Gpu.uuid.in_(uuids), Gpu.node_name != report.node_name)
    ).all()
    live = [(uuid, owner) for uuid, owner, seen in owners if received_at - seen < move_after]
    if live:
        raise GpuOwnedError(sorted(live))
    for uuid, owner, seen in owners:
        session.add(
            AuditEntry(
                at=received_at,
                actor=report.node_name,
                verb="move-gpu",
                object=f"gpu/{uuid}",
                reason=f"from node {owner} (silent since {seen.isoformat()}) to {report.node_name}",
                outcome="applied",
            )
        )
    # the stored topology follows its GPUs: the old node re-sends its own when it returns
    for owner in {owner for _, owner, _ in owners}:
        session.execute(update(Node).where(Node.name == owner).values(topology_fingerprint=None))


def _store_topology(
    session: Session, report: NodeReport, *, fingerprint: str, received_at: datetime
) -> None:
    session.execute(
        _insert(session, TopologyVersion)
        .values(
            node_name=report.node_name,
            fingerprint=fingerprint,
            received_at=received_at,
            topology=report.model_dump(mode="json", include={"host", "gpus", "links"}),
        )
        .on_conflict_do_nothing()
    )
    session.execute(delete(GpuLinkRow).where(GpuLinkRow.node_name == report.node_name))
    known = {
        uuid
        for (uuid,) in session.execute(select(Gpu.uuid).where(Gpu.node_name == report.node_name))
    }
    current = {gpu.uuid for gpu in report.gpus}
    if gone := known - current:
        session.execute(delete(Gpu).where(Gpu.uuid.in_(gone)))
    for gpu in report.gpus:
        values = {
            "node_name": report.node_name,
            "index": gpu.index,
            "product": gpu.product,
            "memory_bytes": gpu.memory_bytes,
            "pci_bus_id": gpu.pci_bus_id,
            "numa_node": gpu.numa_node,
            "health": gpu.health.value,
            "clique": gpu.clique,
            "info": gpu.model_dump(mode="json"),
        }
        session.execute(
            _insert(session, Gpu)
            .values(uuid=gpu.uuid, **values)
            .on_conflict_do_update(index_elements=[Gpu.uuid], set_=values)
        )
    if report.links:
        session.execute(
            _insert(session, GpuLinkRow),
            [
                {
                    "node_name": report.node_name,
                    "gpu_a": link.gpu_a,
                    "gpu_b": link.gpu_b,
                    "nvlink_count": link.nvlink_count,
                    "nvlink_bandwidth_bytes_per_s": link.nvlink_bandwidth_bytes_per_s,
                    "via_nvswitch": link.via_nvswitch,
                    "pcie_level": link.pcie_level.value if link.pcie_level else None,
                }
                for link in report.links
            ],
        )


def _store_samples(session: Session, report: NodeReport) -> None:
    if not report.samples:
        return
    uuids = [s.gpu_uuid for s in report.samples]
    owned = {
        uuid
        for (uuid,) in session.execute(
            select(Gpu.uuid).where(Gpu.node_name == report.node_name, Gpu.uuid.in_(uuids))
        )
    }
    if missing := sorted(set(uuids) - owned):
        raise TopologyUnknownError(
            f"node {report.node_name} reported samples for GPUs not in its topology: "
            + ", ".join(missing)
        )
    at = report.collected_at
    connection = session.connection()
    connection.execute(
        _SAMPLES.insert(),
        [
            {
                "gpu_uuid": s.gpu_uuid,
                "node_name": report.node_name,
                "at": at,
                "util_ratio": s.util_ratio,
                "memory_used_bytes": s.memory_used_bytes,
                "power_w": s.power_w,
                "energy_j": s.energy_j,
                "temperature_c": s.temperature_c,
                "sm_clock_hz": s.sm_clock_hz,
                "process_count": len(s.processes),
                "xid_total": s.xid_total,
            }
            for s in report.samples
        ],
    )
    usage = [
        {
            "at": at,
            "node_name": report.node_name,
            "gpu_uuid": s.gpu_uuid,
            "namespace": p.namespace,
            "pod": p.pod,
            "pod_uid": p.pod_uid,
            "container": p.container,
            "pid": p.pid,
            "memory_used_bytes": p.memory_used_bytes,
        }
        for s in report.samples
        for p in s.processes
    ]
    if usage:
        connection.execute(_USAGE.insert(), usage)
    _update_latest(session, report.samples, at=at)
    _update_rollups(session, report.samples, at=at)


#: One statement for all of a report's GPUs (executemany); a late report never overwrites.
_UPDATE_LATEST: Final = (
    update(_GPUS)
    .where(_GPUS.c.uuid == bindparam("b_uuid"))
    .where(or_(_GPUS.c.latest_at.is_(None), _GPUS.c.latest_at <= bindparam("b_at")))
    .values(
        latest_at=bindparam("b_at"),
        latest_util_ratio=bindparam("b_util"),
        latest_memory_used_bytes=bindparam("b_memory"),
        latest_power_w=bindparam("b_power"),
        latest_energy_j=bindparam("b_energy"),
        latest_temperature_c=bindparam("b_temperature"),
        latest_process_count=bindparam("b_processes"),
        latest_sample=bindparam("b_sample", type_=_GPUS.c.latest_sample.type),
    )
)


def _update_latest(session: Session, samples: Sequence[GpuSample], *, at: datetime) -> None:
    session.connection().execute(
        _UPDATE_LATEST,
        [
            {
                "b_uuid": s.gpu_uuid,
                "b_at": at,
                "b_util": s.util_ratio,
                "b_memory": s.memory_used_bytes,
                "b_power": s.power_w,
                "b_energy": s.energy_j,
                "b_temperature": s.temperature_c,
                "b_processes": len(s.processes),
                "b_sample": s.model_dump(mode="json"),
            }
            for s in samples
        ],
    )


@cache
def _rollup_upsert(dialect: str) -> postgresql.Insert | sqlite.Insert:
    """The rollup upsert for ``dialect``, built once."""
    statement = postgresql.insert(_ROLLUPS) if dialect == "postgresql" else sqlite.insert(_ROLLUPS)
    greatest = func.greatest if dialect == "postgresql" else func.max
    excluded, current = statement.excluded, _ROLLUPS.c
    return statement.on_conflict_do_update(
        index_elements=[current.gpu_uuid, current.level, current.bucket_start],
        set_={
            "samples": current.samples + excluded.samples,
            "util_sum": current.util_sum + excluded.util_sum,
            "util_max": greatest(current.util_max, excluded.util_max),
            "memory_used_sum": current.memory_used_sum + excluded.memory_used_sum,
            "memory_used_max": greatest(current.memory_used_max, excluded.memory_used_max),
            "power_sum_w": current.power_sum_w + excluded.power_sum_w,
            "temperature_max_c": greatest(current.temperature_max_c, excluded.temperature_max_c),
        },
    )


def _update_rollups(session: Session, samples: Sequence[GpuSample], *, at: datetime) -> None:
    rows = [
        {
            "gpu_uuid": s.gpu_uuid,
            "level": level,
            "bucket_start": bucket_start(at, size),
            "samples": 1,
            "util_sum": s.util_ratio or 0.0,
            "util_max": s.util_ratio or 0.0,
            "memory_used_sum": float(s.memory_used_bytes or 0),
            "memory_used_max": s.memory_used_bytes or 0,
            "power_sum_w": s.power_w or 0.0,
            "temperature_max_c": s.temperature_c or 0.0,
        }
        for level, size in ROLLUP_LEVELS.items()
        for s in samples
    ]
    session.connection().execute(_rollup_upsert(session.get_bind().dialect.name), rows)


@dataclass(frozen=True)
class PruneResult:
    """Rows removed by :func:`prune`."""

    samples: int
    workload_usage: int
    rollups_5m: int
    rollups_1h: int
    receipts: int
    audit_entries: int = 0
    topology_versions: int = 0


def prune(
    session: Session,
    *,
    now: datetime,
    raw_retention: timedelta,
    rollup_5m_retention: timedelta,
    rollup_1h_retention: timedelta,
    audit_retention: timedelta | None = None,
    topology_retention: timedelta | None = None,
) -> PruneResult:
    """Delete raw samples, usage, receipts and rollups older than their retention; with
    ``audit_retention``, audit entries; with ``topology_retention``, topology versions a
    node has since replaced (its current one is always kept)."""
    raw_cutoff = now - raw_retention

    def removed(statement: Any) -> int:
        return int(session.execute(statement).rowcount)  # type: ignore[attr-defined]

    return PruneResult(
        samples=removed(delete(Sample).where(Sample.at < raw_cutoff)),
        workload_usage=removed(delete(WorkloadUsage).where(WorkloadUsage.at < raw_cutoff)),
        rollups_5m=removed(
            delete(Rollup).where(
                Rollup.level == "5m", Rollup.bucket_start < now - rollup_5m_retention
            )
        ),
        rollups_1h=removed(
            delete(Rollup).where(
                Rollup.level == "1h", Rollup.bucket_start < now - rollup_1h_retention
            )
        ),
        receipts=removed(delete(ReportReceipt).where(ReportReceipt.collected_at < raw_cutoff)),
        audit_entries=0
        if audit_retention is None
        else removed(delete(AuditEntry).where(AuditEntry.at < now - audit_retention)),
        topology_versions=0
        if topology_retention is None
        else removed(
            delete(TopologyVersion).where(
                TopologyVersion.received_at < now - topology_retention,
                ~select(Node.name)
                .where(
                    Node.name == TopologyVersion.node_name,
                    Node.topology_fingerprint == TopologyVersion.fingerprint,
                )
                .exists(),
            )
        ),
    )
