"""The names of the entries a whole-system run change folds (a directory with many).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Additive only: a new nullable column an older hs-tx ignores."""
    op.add_column("run_changes", sa.Column("names", sa.Text, nullable=True))


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
