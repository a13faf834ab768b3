"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29 17:14:56.708620
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("verb", sa.String(length=64), nullable=False),
        sa.Column("object", sa.String(length=512), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_at", ["at"], unique=False)

    op.create_table(
        "forecasts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("horizon_s", sa.Float(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("agent_version", sa.String(length=256), nullable=False),
        sa.Column("driver_version", sa.String(length=256), nullable=True),
        sa.Column("cuda_version", sa.String(length=16), nullable=True),
        sa.Column("pool", sa.String(length=63), nullable=True),
        sa.Column("topology_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("host", sa.JSON(), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "recommendations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "report_receipts",
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node_name", "sequence", "collected_at"),
    )
    op.create_table(
        "rollups",
        sa.Column("gpu_uuid", sa.String(length=64), nullable=False),
        sa.Column("level", sa.String(length=4), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("util_sum", sa.Float(), nullable=False),
        sa.Column("util_max", sa.Float(), nullable=False),
        sa.Column("memory_used_sum", sa.Float(), nullable=False),
        sa.Column("memory_used_max", sa.BigInteger(), nullable=False),
        sa.Column("power_sum_w", sa.Float(), nullable=False),
        sa.Column("temperature_max_c", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("gpu_uuid", "level", "bucket_start"),
    )
    with op.batch_alter_table("rollups", schema=None) as batch_op:
        batch_op.create_index("ix_rollups_level_bucket", ["level", "bucket_start"], unique=False)

    op.create_table(
        "samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("gpu_uuid", sa.String(length=64), nullable=False),
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("util_ratio", sa.Float(), nullable=True),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=True),
        sa.Column("power_w", sa.Float(), nullable=True),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("temperature_c", sa.Float(), nullable=True),
        sa.Column("sm_clock_hz", sa.Float(), nullable=True),
        sa.Column("process_count", sa.Integer(), nullable=False),
        sa.Column("xid_total", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.create_index("ix_samples_at", ["at"], unique=False)
        batch_op.create_index("ix_samples_gpu_at", ["gpu_uuid", "at"], unique=False)

    op.create_table(
        "workload_usage",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("gpu_uuid", sa.String(length=64), nullable=False),
        sa.Column("namespace", sa.String(length=253), nullable=True),
        sa.Column("pod", sa.String(length=253), nullable=True),
        sa.Column("pod_uid", sa.String(length=64), nullable=True),
        sa.Column("container", sa.String(length=253), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workload_usage", schema=None) as batch_op:
        batch_op.create_index("ix_workload_usage_pod", ["namespace", "pod", "at"], unique=False)

    op.create_table(
        "gpu_links",
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("gpu_a", sa.Integer(), nullable=False),
        sa.Column("gpu_b", sa.Integer(), nullable=False),
        sa.Column("nvlink_count", sa.Integer(), nullable=False),
        sa.Column("nvlink_bandwidth_bytes_per_s", sa.Float(), nullable=True),
        sa.Column("via_nvswitch", sa.Boolean(), nullable=False),
        sa.Column("pcie_level", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["node_name"], ["nodes.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_name", "gpu_a", "gpu_b"),
    )
    op.create_table(
        "gpus",
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("product", sa.String(length=256), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("pci_bus_id", sa.String(length=16), nullable=False),
        sa.Column("numa_node", sa.Integer(), nullable=True),
        sa.Column("health", sa.String(length=16), nullable=False),
        sa.Column("clique", sa.String(length=256), nullable=True),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.Column("latest_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("latest_util_ratio", sa.Float(), nullable=True),
        sa.Column("latest_memory_used_bytes", sa.BigInteger(), nullable=True),
        sa.Column("latest_power_w", sa.Float(), nullable=True),
        sa.Column("latest_energy_j", sa.Float(), nullable=True),
        sa.Column("latest_temperature_c", sa.Float(), nullable=True),
        sa.Column("latest_process_count", sa.Integer(), nullable=True),
        sa.Column("latest_sample", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["node_name"], ["nodes.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uuid"),
    )
    with op.batch_alter_table("gpus", schema=None) as batch_op:
        batch_op.create_index("ix_gpus_node", ["node_name"], unique=False)

    op.create_table(
        "topology_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("topology", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["node_name"], ["nodes.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("node_name", "fingerprint"),
    )


def downgrade() -> None:

    op.drop_table("topology_versions")
    with op.batch_alter_table("gpus", schema=None) as batch_op:
        batch_op.drop_index("ix_gpus_node")

    op.drop_table("gpus")
    op.drop_table("gpu_links")
    with op.batch_alter_table("workload_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_workload_usage_pod")

    op.drop_table("workload_usage")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_index("ix_samples_gpu_at")
        batch_op.drop_index("ix_samples_at")

    op.drop_table("samples")
    with op.batch_alter_table("rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_rollups_level_bucket")

    op.drop_table("rollups")
    op.drop_table("report_receipts")
    op.drop_table("recommendations")
    op.drop_table("nodes")
    op.drop_table("forecasts")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_at")

    op.drop_table("audit_log")
