"""Alembic environment and versions of the hs-tx journal (installed as hs_txupdate.migrations)."""
