"""workload pods and container usage: right-sizing per workload, and CPU and memory

``workload_pods``: the workload that owns each GPU pod and its containers' requests (the
leader's view); ``container_usage``: CPU and memory of the containers running GPU processes
(the agents' cgroup readings).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "container_usage",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=True),
        sa.Column("pod", sa.String(length=253), nullable=True),
        sa.Column("pod_uid", sa.String(length=64), nullable=True),
        sa.Column("container", sa.String(length=63), nullable=True),
        sa.Column("cpu_cores", sa.Float(), nullable=True),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("container_usage", schema=None) as batch_op:
        batch_op.create_index("ix_container_usage_pod", ["namespace", "pod", "at"], unique=False)
        batch_op.create_index("ix_container_usage_at", ["at"], unique=False)
    op.create_table(
        "workload_pods",
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("pod", sa.String(length=253), nullable=False),
        sa.Column("owner_kind", sa.String(length=63), nullable=False),
        sa.Column("owner_api_version", sa.String(length=253), nullable=False),
        sa.Column("owner_name", sa.String(length=253), nullable=False),
        sa.Column("requests", sa.JSON(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "pod"),
    )
    with op.batch_alter_table("workload_pods", schema=None) as batch_op:
        batch_op.create_index("ix_workload_pods_seen", ["seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workload_pods", schema=None) as batch_op:
        batch_op.drop_index("ix_workload_pods_seen")
    op.drop_table("workload_pods")
    with op.batch_alter_table("container_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_container_usage_at")
        batch_op.drop_index("ix_container_usage_pod")
    op.drop_table("container_usage")
