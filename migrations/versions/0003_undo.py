"""Undo: a fingerprint of each path a transaction changed; which undo undid what.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Additive only: a nullable column and a new table an older hs-tx ignores."""
    with op.batch_alter_table("paths") as batch:
        batch.add_column(sa.Column("fingerprint", sa.String, nullable=True))
    op.create_table(
        "undo_links",
        sa.Column("undo_tx_id", sa.Integer, sa.ForeignKey("transactions.id"), primary_key=True),
        sa.Column("undone_tx_id", sa.Integer, sa.ForeignKey("transactions.id"), primary_key=True),
    )


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
