"""Alembic environment: hs-tx passes an open connection in `config.attributes`."""

from __future__ import annotations

from alembic import context

from hs_txupdate.journal.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds tables
)
with context.begin_transaction():
    context.run_migrations()
