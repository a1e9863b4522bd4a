"""Source commits on transactions; the kind of a module run (main or maintenance).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Additive only: nullable columns an older hs-tx simply does not read."""
    with op.batch_alter_table("transactions") as batch:
        batch.add_column(sa.Column("source_before", sa.String, nullable=True))
        batch.add_column(sa.Column("source_after", sa.String, nullable=True))
    with op.batch_alter_table("module_runs") as batch:
        batch.add_column(sa.Column("kind", sa.String, nullable=True))


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
