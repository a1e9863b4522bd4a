"""Network guard: the network state before and after a transaction, and what the guard did.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Additive only: nullable JSON text columns an older hs-tx simply does not read."""
    with op.batch_alter_table("transactions") as batch:
        batch.add_column(sa.Column("net_before", sa.Text, nullable=True))
        batch.add_column(sa.Column("net_after", sa.Text, nullable=True))
        batch.add_column(sa.Column("net_restored", sa.Text, nullable=True))
        batch.add_column(sa.Column("net_actions", sa.Text, nullable=True))


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
