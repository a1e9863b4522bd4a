"""What a run changed inside a whole-system scope, as the write audit attributed it.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Additive only: a new table an older hs-tx ignores."""
    op.create_table(
        "run_changes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tx_id", sa.Integer, sa.ForeignKey("transactions.id"), index=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("change", sa.String, nullable=False),
        sa.Column("module", sa.String, nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
