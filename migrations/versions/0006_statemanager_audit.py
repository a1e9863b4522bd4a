"""StateManager backups joining the transaction, the write audit, learned footprints,
service states.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Additive only: nullable columns and new tables an older hs-tx ignores."""
    with op.batch_alter_table("paths") as batch:
        batch.add_column(sa.Column("origin", sa.String, nullable=True))
        batch.add_column(sa.Column("added_by", sa.String, nullable=True))
        batch.add_column(sa.Column("role", sa.String, nullable=True))
    with op.batch_alter_table("transactions") as batch:
        batch.add_column(sa.Column("audit_method", sa.String, nullable=True))
        batch.add_column(sa.Column("audit_reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("audit_others", sa.Integer, nullable=True))
    op.create_table(
        "outside_scope",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tx_id", sa.Integer, sa.ForeignKey("transactions.id"), index=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("change", sa.String, nullable=False),
        sa.Column("module", sa.String, nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("restored", sa.Boolean, nullable=True),
    )
    op.create_table(
        "footprints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("module", sa.String, nullable=False, index=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("tx_id", sa.Integer, sa.ForeignKey("transactions.id")),
        sa.Column("forgotten_at", sa.String, nullable=True),
    )
    op.create_table(
        "statemanager_backups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tx_id", sa.Integer, sa.ForeignKey("transactions.id"), index=True),
        sa.Column("name", sa.String, nullable=False, index=True),
        sa.Column("module", sa.String, nullable=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("n", sa.Integer, nullable=True),
        sa.Column("state", sa.Text, nullable=True),
        sa.Column("at", sa.String, nullable=False),
    )
    op.create_table(
        "services",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tx_id", sa.Integer, sa.ForeignKey("transactions.id"), index=True),
        sa.Column("unit", sa.String, nullable=False),
        sa.Column("active", sa.Boolean, nullable=True),
        sa.Column("enabled", sa.String, nullable=True),
        sa.Column("source", sa.String, nullable=False),
    )


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
