"""demand samples for forecasts; forecasts looked up by subject; the finer activity signal

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "demand_samples",
        sa.Column("scope", sa.String(length=320), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("capacity_gpus", sa.Float(), nullable=False),
        sa.Column("allocated_gpus", sa.Float(), nullable=False),
        sa.Column("pending_gpus", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "at"),
    )
    with op.batch_alter_table("demand_samples", schema=None) as batch_op:
        batch_op.create_index("ix_demand_samples_at", ["at"], unique=False)
    with op.batch_alter_table("forecasts", schema=None) as batch_op:
        batch_op.create_index("ix_forecasts_subject", ["subject", "created_at"], unique=False)
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sm_active_ratio", sa.Float(), nullable=True))
    with op.batch_alter_table("workload_usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sm_util_ratio", sa.Float(), nullable=True))
        batch_op.create_index("ix_workload_usage_at", ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workload_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_workload_usage_at")
        batch_op.drop_column("sm_util_ratio")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_column("sm_active_ratio")
    with op.batch_alter_table("forecasts", schema=None) as batch_op:
        batch_op.drop_index("ix_forecasts_subject")
    with op.batch_alter_table("demand_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_demand_samples_at")
    op.drop_table("demand_samples")
