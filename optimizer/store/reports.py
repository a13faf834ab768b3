"""Storing node reports: one report, one transaction, stored once.

:func:`ingest_report` records a receipt keyed by (node, sequence, collected_at) first; a
resent report finds its receipt and changes nothing. Topology is stored when its fingerprint
changes; samples, per-pod usage and the 5-minute and 1-hour rollups always. The caller owns
the transaction: commit on success, roll back on any error, so nothing is half-written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Final

from sqlalchemy import Table, delete, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from optimizer.store.models import (
    AuditEntry,
    ContainerUsageRow,
    Gpu,
    GpuLinkRow,
    Node,
    ReportReceipt,
    Rollup,
    Sample,
    TopologyVersion,
    WorkloadPod,
    WorkloadUsage,
)
from optimizer.store.rollups import ROLLUP_LEVELS, bucket_start, fold
from optimizer.store.samples import write_samples
from shared.report import NodeReport

_GPUS: Final[Table] = Gpu.__table__  # type: ignore[assignment]
_LINKS: Final[Table] = GpuLinkRow.__table__  # type: ignore[assignment]


class TopologyUnknownError(LookupError):
    """A samples report for a node (or GPU) whose topology the optimizer does not have."""

    @classmethod
    def no_topology(cls, node: str) -> TopologyUnknownError:
        """The node has never sent its topology."""
        return cls(f"node {node} has sent no topology yet")

    @classmethod
    def foreign_gpus(cls, node: str, missing: Sequence[str]) -> TopologyUnknownError:
        """Samples for GPUs (``missing``, sorted) that are not in the node's topology."""
        return cls(
            f"node {node} reported samples for GPUs not in its topology: " + ", ".join(missing)
        )


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
        raise TopologyUnknownError.no_topology(report.node_name)
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
    _store_gpus(session, report)
    _store_links(session, report)


_GPU_COLUMNS: Final = (
    "node_name",
    "index",
    "product",
    "memory_bytes",
    "pci_bus_id",
    "numa_node",
    "health",
    "clique",
    "info",
)
_LINK_COLUMNS: Final = (
    "nvlink_count",
    "nvlink_bandwidth_bytes_per_s",
    "via_nvswitch",
    "pcie_level",
)


def _store_gpus(session: Session, report: NodeReport) -> None:
    """Write only the GPU rows that changed (a health change is one row, not the node)."""
    gpus = _GPUS.c
    stored = {
        row[0]: tuple(row[1:])
        for row in session.execute(
            select(gpus.uuid, *(gpus[c] for c in _GPU_COLUMNS)).where(
                gpus.node_name == report.node_name
            )
        )
    }
    wanted = {
        gpu.uuid: (
            report.node_name,
            gpu.index,
            gpu.product,
            gpu.memory_bytes,
            gpu.pci_bus_id,
            gpu.numa_node,
            gpu.health.value,
            gpu.clique,
            gpu.model_dump(mode="json"),
        )
        for gpu in report.gpus
    }
    if gone := set(stored) - set(wanted):
        session.execute(delete(Gpu).where(Gpu.uuid.in_(sorted(gone))))
    changed = [
        {"uuid": uuid, **dict(zip(_GPU_COLUMNS, values, strict=True))}
        for uuid, values in sorted(wanted.items())
        if stored.get(uuid) != values
    ]
    if changed:
        session.connection().execute(_gpu_upsert(session.get_bind().dialect.name), changed)


def _store_links(session: Session, report: NodeReport) -> None:
    """Write only the links that changed: unchanged pairs are neither deleted nor inserted."""
    links = _LINKS.c
    stored = {
        (row[0], row[1]): tuple(row[2:])
        for row in session.execute(
            select(links.gpu_a, links.gpu_b, *(links[c] for c in _LINK_COLUMNS)).where(
                links.node_name == report.node_name
            )
        )
    }
    wanted = {
        (link.gpu_a, link.gpu_b): (
            link.nvlink_count,
            link.nvlink_bandwidth_bytes_per_s,
            link.via_nvswitch,
            link.pcie_level.value if link.pcie_level else None,
        )
        for link in report.links
    }
    stale = sorted(pair for pair, values in stored.items() if wanted.get(pair) != values)
    if stale:
        session.execute(
            delete(GpuLinkRow).where(
                GpuLinkRow.node_name == report.node_name,
                tuple_(GpuLinkRow.gpu_a, GpuLinkRow.gpu_b).in_(stale),
            )
        )
    new = [
        {
            "node_name": report.node_name,
            "gpu_a": a,
            "gpu_b": b,
            **dict(zip(_LINK_COLUMNS, v, strict=True)),
        }
        for (a, b), v in sorted(wanted.items())
        if stored.get((a, b)) != v
    ]
    if new:
        session.connection().execute(_LINKS.insert(), new)


@cache
def _gpu_upsert(dialect: str) -> postgresql.Insert | sqlite.Insert:
    """Insert a GPU row, or take over the row of that UUID (a GPU that moved here)."""
    table = _GPUS
    statement = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.uuid],
        set_={c: statement.excluded[c] for c in _GPU_COLUMNS},
    )


def _store_samples(session: Session, report: NodeReport) -> None:
    if not report.samples:
        return
    if unowned := write_samples(session.connection(), [report]):
        # the caller's transaction (or SAVEPOINT) rolls back what was written
        raise TopologyUnknownError.foreign_gpus(report.node_name, sorted(u for _, u in unowned))


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
    workload_pods: int = 0


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
    node has since replaced (its current one is always kept). Pending samples of closed
    buckets are folded into the rollups first."""
    raw_cutoff = now - raw_retention
    fold(session.connection(), before=bucket_start(now, ROLLUP_LEVELS["5m"]), limit=None)

    def removed(statement: Any) -> int:
        return int(session.execute(statement).rowcount)  # type: ignore[attr-defined]

    return PruneResult(
        samples=removed(delete(Sample).where(Sample.at < raw_cutoff)),
        workload_usage=removed(delete(WorkloadUsage).where(WorkloadUsage.at < raw_cutoff))
        + removed(delete(ContainerUsageRow).where(ContainerUsageRow.at < raw_cutoff)),
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
        workload_pods=removed(delete(WorkloadPod).where(WorkloadPod.seen_at < raw_cutoff)),
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
