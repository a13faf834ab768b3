"""gang intents and status

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 20:02:47.259128
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gang_intents",
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("gang", sa.String(length=253), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("placements", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("plan_id"),
    )
    with op.batch_alter_table("gang_intents", schema=None) as batch_op:
        batch_op.create_index("ix_gang_intents_gang", ["namespace", "gang"], unique=False)

    op.create_table(
        "gang_status",
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("gang", sa.String(length=253), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(length=63), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("plan_id", sa.String(length=64), nullable=True),
        sa.Column("placement", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "gang"),
    )


def downgrade() -> None:
    op.drop_table("gang_status")
    with op.batch_alter_table("gang_intents", schema=None) as batch_op:
        batch_op.drop_index("ix_gang_intents_gang")

    op.drop_table("gang_intents")
