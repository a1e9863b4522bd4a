"""Initial journal schema: transactions, paths, events, module runs, meta.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table of the first journal schema."""
    op.create_table(
        "hs_tx_meta",
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.String, nullable=False),
    )
    op.create_table(
        "transactions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("started_at", sa.String, nullable=False),
        sa.Column("finished_at", sa.String),
        sa.Column("user", sa.String, nullable=False),
        sa.Column("host", sa.String, nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("undoes", sa.Integer, sa.ForeignKey("transactions.id")),
        sa.Column("snapshots_pruned_at", sa.String),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "paths",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tx_id", sa.Integer, sa.ForeignKey("transactions.id"), nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("existed", sa.Boolean, nullable=False),
        sa.Column("backend", sa.String, nullable=False),
        sa.Column("snapshot", sa.Text),
        sa.Column("manifest", sa.Text),
        sa.Column("manifest_sha256", sa.String),
        sa.Column("size", sa.Integer),
        sa.Column("checksum", sa.String),
        sa.Column("changed", sa.Boolean),
        sa.Column("pruned_at", sa.String),
        sa.UniqueConstraint("tx_id", "n"),
    )
    op.create_index("ix_paths_tx_id", "paths", ["tx_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tx_id", sa.Integer, sa.ForeignKey("transactions.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("phase", sa.String, nullable=False),
        sa.Column("step", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("at", sa.String, nullable=False),
        sa.Column("detail", sa.Text),
        sa.UniqueConstraint("tx_id", "seq"),
    )
    op.create_index("ix_events_tx_id", "events", ["tx_id"])
    op.create_table(
        "module_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tx_id", sa.Integer, sa.ForeignKey("transactions.id"), nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("schema_version", sa.String),
        sa.Column("version_from", sa.String),
        sa.Column("version_to", sa.String),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("started_at", sa.String, nullable=False),
        sa.Column("duration_s", sa.Float),
        sa.Column("exit_status", sa.Integer),
        sa.Column("output_tail", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_module_runs_tx_id", "module_runs", ["tx_id"])
    op.execute("INSERT INTO hs_tx_meta (key, value) VALUES ('compat', '1')")


def downgrade() -> None:
    """The journal is only ever migrated forward."""
    raise NotImplementedError("the journal is only ever migrated forward")
