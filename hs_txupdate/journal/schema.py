"""Opening the journal file: permissions, pragmas, and forward-only migrations."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DatabaseError

from ..base.errors import DamagedError

# Every revision this code knows, oldest first; the last is the head it writes.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009")
# Raised only by a migration an older hs-tx could not live with; additive ones keep it.
COMPAT_LEVEL = 1


def create_journal_engine(path: Path) -> Engine:
    """Open (creating 0600 if missing) the journal at `path`, migrated to our head.

    Raises DamagedError when the file is not a readable journal or was written
    by an incompatible newer hs-tx.
    """
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _set_pragmas)
    try:
        _migrate(engine, path)
    except DatabaseError as exc:
        engine.dispose()
        raise DamagedError(
            f"journal {path} is unreadable: {exc.orig}",
            f"move it aside (mv {path} {path}.broken) to start a new journal; "
            "snapshots of earlier runs stay on disk for a manual restore",
        ) from exc
    return engine


def identity_of(path: Path) -> str | None:
    """The identity (UUID) of the journal file at `path`, read-only; None when there is
    no readable journal with one there (moved aside, replaced, or not a journal)."""
    if not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM hs_tx_meta WHERE key = 'journal_uuid'").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _set_pragmas(dbapi_connection: object, _record: object) -> None:
    """WAL with synchronous=FULL: a committed event survives a power cut."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _migrate(engine: Engine, path: Path) -> None:
    """Bring the journal to our head revision, or accept a compatible newer one."""
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        current = None
        if "alembic_version" in tables:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if current == REVISIONS[-1]:
            return
        if current is not None and current not in REVISIONS:
            _check_newer_compatible(conn, path, current)
            return
        _run_alembic_upgrade(conn)
        conn.commit()


def _check_newer_compatible(conn: object, path: Path, revision: str) -> None:
    """Accept a journal migrated by a newer hs-tx only if its changes were additive."""
    level = conn.execute(  # type: ignore[attr-defined]
        text("SELECT value FROM hs_tx_meta WHERE key = 'compat'")
    ).scalar()
    if level is None or int(level) > COMPAT_LEVEL:
        raise DamagedError(
            f"journal {path} has schema {revision} (compat level {level}) from a newer hs-tx",
            "install that newer hs-tx again, or move the journal aside to start a new one",
        )


def _run_alembic_upgrade(conn: object) -> None:
    """Apply the Alembic migrations shipped with the package to `conn`."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    script_location = resources.files("hs_txupdate.migrations")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
