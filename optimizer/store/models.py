"""The optimizer's tables (SQLAlchemy 2.0 typed ORM), the same on SQLite and PostgreSQL.

Only ``optimizer/store/`` touches these; the API and the planner go through its repository
functions. Every timestamp is UTC; every quantity is in the contract's SI units.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base; datetimes are UTC and aware, dicts are JSON."""

    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON}  # noqa: RUF012


class Node(Base):
    """One GPU node as its agent last described it."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    agent_version: Mapped[str] = mapped_column(String(256))
    driver_version: Mapped[str | None] = mapped_column(String(256))
    cuda_version: Mapped[str | None] = mapped_column(String(16))
    pool: Mapped[str | None] = mapped_column(String(63))
    topology_fingerprint: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[dict[str, Any] | None]
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    last_collected_at: Mapped[datetime]
    last_sequence: Mapped[int] = mapped_column(BigInteger)


class TopologyVersion(Base):
    """A node's topology each time it changed (host, GPUs and links as reported)."""

    __tablename__ = "topology_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime]
    topology: Mapped[dict[str, Any]]

    __table_args__ = (UniqueConstraint("node_name", "fingerprint"),)


class Gpu(Base):
    """A GPU's current static facts (the latest topology report's)."""

    __tablename__ = "gpus"

    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name", ondelete="CASCADE"))
    index: Mapped[int]
    product: Mapped[str] = mapped_column(String(256))
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    pci_bus_id: Mapped[str] = mapped_column(String(16))
    numa_node: Mapped[int | None]
    health: Mapped[str] = mapped_column(String(16))
    clique: Mapped[str | None] = mapped_column(String(256))
    info: Mapped[dict[str, Any]]
    # The latest sample, kept on the row so node views and the summary need no scan.
    latest_at: Mapped[datetime | None]
    latest_util_ratio: Mapped[float | None] = mapped_column(Float)
    latest_memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    latest_power_w: Mapped[float | None] = mapped_column(Float)
    latest_energy_j: Mapped[float | None] = mapped_column(Float)
    latest_temperature_c: Mapped[float | None] = mapped_column(Float)
    latest_process_count: Mapped[int | None]
    latest_sample: Mapped[dict[str, Any] | None]

    __table_args__ = (Index("ix_gpus_node", "node_name"),)


class GpuLinkRow(Base):
    """How two GPUs of a node are connected."""

    __tablename__ = "gpu_links"

    node_name: Mapped[str] = mapped_column(
        ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True
    )
    gpu_a: Mapped[int] = mapped_column(primary_key=True)
    gpu_b: Mapped[int] = mapped_column(primary_key=True)
    nvlink_count: Mapped[int]
    nvlink_bandwidth_bytes_per_s: Mapped[float | None] = mapped_column(Float)
    via_nvswitch: Mapped[bool]
    pcie_level: Mapped[str | None] = mapped_column(String(16))


class ReportReceipt(Base):
    """One accepted report; the unique key makes a resent report a no-op."""

    __tablename__ = "report_receipts"

    node_name: Mapped[str] = mapped_column(String(253), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    collected_at: Mapped[datetime] = mapped_column(primary_key=True)
    received_at: Mapped[datetime]


class Sample(Base):
    """Raw per-GPU readings (kept for ``raw_retention_s``)."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    gpu_uuid: Mapped[str] = mapped_column(String(64))
    node_name: Mapped[str] = mapped_column(String(253))
    at: Mapped[datetime]
    util_ratio: Mapped[float | None] = mapped_column(Float)
    memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    power_w: Mapped[float | None] = mapped_column(Float)
    energy_j: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    sm_clock_hz: Mapped[float | None] = mapped_column(Float)
    process_count: Mapped[int]
    xid_total: Mapped[int]
    #: GPM SM activity (Hopper and newer; None elsewhere): what right-sizing trusts most.
    sm_active_ratio: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_samples_gpu_at", "gpu_uuid", "at"), Index("ix_samples_at", "at"))


class Rollup(Base):
    """Per-GPU aggregates over 5-minute and 1-hour buckets, folded from
    :class:`RollupPending` once a 5-minute bucket has closed (optimizer/store/rollups.py)."""

    __tablename__ = "rollups"

    gpu_uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    level: Mapped[str] = mapped_column(String(4), primary_key=True)  # "5m" or "1h"
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    samples: Mapped[int]
    util_sum: Mapped[float] = mapped_column(Float)
    util_max: Mapped[float] = mapped_column(Float)
    memory_used_sum: Mapped[float] = mapped_column(Float)
    memory_used_max: Mapped[int] = mapped_column(BigInteger)
    power_sum_w: Mapped[float] = mapped_column(Float)
    temperature_max_c: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_rollups_level_bucket", "level", "bucket_start"),)


class RollupPending(Base):
    """One stored samples report's share of the rollups, not folded into them yet: its
    buckets and, per GPU, ``[uuid, util, memory, power, temperature]`` (JSON text)."""

    __tablename__ = "rollup_pending"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    node_name: Mapped[str] = mapped_column(String(253))
    collected_at: Mapped[datetime]
    bucket_5m: Mapped[datetime]
    bucket_1h: Mapped[datetime]
    samples: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_rollup_pending_node", "node_name", "collected_at"),)


class WorkloadUsage(Base):
    """A pod's container on a GPU at one sample: the basis of right-sizing and forecasts."""

    __tablename__ = "workload_usage"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime]
    node_name: Mapped[str] = mapped_column(String(253))
    gpu_uuid: Mapped[str] = mapped_column(String(64))
    namespace: Mapped[str | None] = mapped_column(String(253))
    pod: Mapped[str | None] = mapped_column(String(253))
    pod_uid: Mapped[str | None] = mapped_column(String(64))
    container: Mapped[str | None] = mapped_column(String(253))
    pid: Mapped[int]
    memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: The process's share of SM time (NVML per-process utilisation; None where unknown).
    sm_util_ratio: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_workload_usage_pod", "namespace", "pod", "at"),
        # right-sizing reads a recent window of every pod
        Index("ix_workload_usage_at", "at"),
    )


class ContainerUsageRow(Base):
    """CPU and memory of a container running GPU processes, at one sample (its cgroup)."""

    __tablename__ = "container_usage"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime]
    node_name: Mapped[str] = mapped_column(String(253))
    namespace: Mapped[str | None] = mapped_column(String(63))
    pod: Mapped[str | None] = mapped_column(String(253))
    pod_uid: Mapped[str | None] = mapped_column(String(64))
    container: Mapped[str | None] = mapped_column(String(63))
    cpu_cores: Mapped[float | None] = mapped_column(Float)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_container_usage_pod", "namespace", "pod", "at"),
        Index("ix_container_usage_at", "at"),
    )


class WorkloadPod(Base):
    """A GPU pod the leader saw, with the workload that owns it and its containers'
    requests: right-sizing groups usage by workload and compares with the requests."""

    __tablename__ = "workload_pods"

    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    pod: Mapped[str] = mapped_column(String(253), primary_key=True)
    owner_kind: Mapped[str] = mapped_column(String(63))
    owner_api_version: Mapped[str] = mapped_column(String(253))
    owner_name: Mapped[str] = mapped_column(String(253))
    #: container -> {"cpu": cores, "memory": bytes} requested (absent: none requested)
    requests: Mapped[dict[str, Any]]
    seen_at: Mapped[datetime]

    __table_args__ = (Index("ix_workload_pods_seen", "seen_at"),)


class AuditEntry(Base):
    """Who did what to what, and why: every mutation and every refused request."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(256))
    verb: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(32))
    plan_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_audit_at", "at"),)

    #: Longest text kept for ``reason`` (a Text column, bounded so a flood stays small).
    MAX_REASON: ClassVar[int] = 4096

    @validates("actor", "verb", "object", "outcome", "plan_id", "reason")
    def _fit_column(self, key: str, value: str | None) -> str | None:
        """Every audited field is cut to its column, so PostgreSQL stores what SQLite does
        (a refusal with a 600-character path is audited, not lost)."""
        if value is None:
            return None
        column_type = self.__table__.c[key].type
        length = self.MAX_REASON if key == "reason" else int(getattr(column_type, "length", 0))
        return value if len(value) <= length else value[: length - 1] + "…"


class DemandSample(Base):
    """A scope's GPU capacity and demand (allocated + pending) at one controller cycle,
    recorded by the leader at most once per ``demand_sample_s``: the forecasts' history."""

    __tablename__ = "demand_samples"

    scope: Mapped[str] = mapped_column(String(320), primary_key=True)
    at: Mapped[datetime] = mapped_column(primary_key=True)
    capacity_gpus: Mapped[float] = mapped_column(Float)
    allocated_gpus: Mapped[float] = mapped_column(Float)
    pending_gpus: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_demand_samples_at", "at"),)


class JobRun(Base):
    """A managed gang that ran here and ended: what run-time predictions learn from."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(63))
    gang: Mapped[str] = mapped_column(String(253))
    queue: Mapped[str | None] = mapped_column(String(63))
    gpus: Mapped[float] = mapped_column(Float)
    pods: Mapped[int]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    phase: Mapped[str] = mapped_column(String(16))  # succeeded | failed

    __table_args__ = (Index("ix_job_runs_finished", "finished_at"),)

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class Forecast(Base):
    """A stored forecast of one scope's metric: its points, the models chosen and their
    validation scores (``payload``), written by the retraining job."""

    __tablename__ = "forecasts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime]
    #: ``<metric>:<scope>@<step s>``, e.g. ``gpu_demand:model/NVIDIA H100@3600``
    subject: Mapped[str] = mapped_column(String(256))
    horizon_s: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]]

    __table_args__ = (Index("ix_forecasts_subject", "subject", "created_at"),)


class Recommendation(Base):
    """A right-sizing or defragmentation recommendation (filled by later issues)."""

    __tablename__ = "recommendations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(512))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(32))


class GangIntent(Base):
    """A gang admission the controller decided, written before it touches any pod.

    A new leader finishes (or abandons) every intent still ``admitting`` from this record, so
    a crash between pinning pods and releasing their gates never leaves a partial gang.
    """

    __tablename__ = "gang_intents"

    plan_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(63))
    gang: Mapped[str] = mapped_column(String(253))
    created_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))  # admitting | admitted | abandoned
    #: {"pods": [{"name", "uid", "node", "gpus"}], "domain": str | None}
    placements: Mapped[dict[str, Any]]

    __table_args__ = (Index("ix_gang_intents_gang", "namespace", "gang"),)


class GangStatus(Base):
    """Each gang's latest state and its explanation, as the leader last wrote them; every
    replica serves them from here (``GET /v1/gangs``)."""

    __tablename__ = "gang_status"

    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    gang: Mapped[str] = mapped_column(String(253), primary_key=True)
    #: waiting | would-admit | admitted | running | succeeded | failed | timed-out | invalid
    phase: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    size: Mapped[int]
    members: Mapped[int]
    queue: Mapped[str | None] = mapped_column(String(63))
    first_seen: Mapped[datetime]
    updated_at: Mapped[datetime]
    plan_id: Mapped[str | None] = mapped_column(String(64))
    #: {"pods": {pod name: node}} once admitted
    placement: Mapped[dict[str, Any]]
    #: After a timeout: no new plan before this time (kept here, so a new leader honours it).
    retry_at: Mapped[datetime | None]
    #: The current backoff; doubles on each timeout up to a cap.
    backoff_s: Mapped[float] = mapped_column(Float, server_default="0")
