"""room on each page for in-place (HOT) updates of the rows ingest updates every report

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:30:00

Every samples report updates its GPUs' latest view, its node's progress and two rollup rows
per GPU. With full pages PostgreSQL writes each new row version to another page and adds
an entry to every index; with free room on the page (a lower fillfactor) the update stays
on its page and no index is touched (a heap-only tuple), which roughly halves the cost of
these updates. SQLite has no fillfactor: nothing to do there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = {"gpus": 50, "nodes": 50, "rollups": 70}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, percent in FILLFACTOR.items():
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {percent})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in FILLFACTOR:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
