"""Alembic environment: runs on the connection the optimizer hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from optimizer.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters via table copies
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
