"""The journal's identity: a UUID created with it, carried by every snapshot name.

Revision ID: 0007
Revises: 0006
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Additive only: one row in hs_tx_meta, which an older hs-tx ignores."""
    meta = sa.table("hs_tx_meta", sa.column("key", sa.String), sa.column("value", sa.String))
    op.bulk_insert(meta, [{"key": "journal_uuid", "value": str(uuid.uuid4())}])


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
