"""rollups folded per closed bucket: ``rollup_pending``

Each stored samples report adds one row here (its buckets and its GPUs' values) instead of
upserting two rollup rows per GPU; the rows are folded into ``rollups`` once their 5-minute
bucket has closed. A downgrade folds what is pending first.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollup_pending",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bucket_5m", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bucket_1h", sa.DateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollup_pending", schema=None) as batch_op:
        batch_op.create_index("ix_rollup_pending_node", ["node_name", "collected_at"], unique=False)


def downgrade() -> None:
    from optimizer.store.rollups import fold  # the fold of this revision

    fold(op.get_bind(), before=None, limit=None)
    with op.batch_alter_table("rollup_pending", schema=None) as batch_op:
        batch_op.drop_index("ix_rollup_pending_node")
    op.drop_table("rollup_pending")
