"""The fingerprint of each scope path when its transaction snapshotted it.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Additive only: a nullable column an older hs-tx ignores."""
    with op.batch_alter_table("paths") as batch:
        batch.add_column(sa.Column("fingerprint_before", sa.String, nullable=True))


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
