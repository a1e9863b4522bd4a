"""Opening the journal file: permissions, pragmas, and forward-only migrations.

Every command reads and writes the journal through plain `sqlite3`; SQLAlchemy
and Alembic are imported only when the file needs a migration (a new journal, or
one written by an older hs-tx), since importing them costs more than most
commands take.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from ..base.errors import DamagedError

# Every revision this code knows, oldest first; the last is the head it writes.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009")
# Raised only by a migration an older hs-tx could not live with; additive ones keep it.
COMPAT_LEVEL = 1
# WAL with synchronous=FULL: a committed event survives a power cut.
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


def open_journal(path: Path) -> sqlite3.Connection:
    """Open (creating 0600 if missing) the journal at `path`, migrated to our head.

    Returns a connection in autocommit mode: the journal API opens every
    transaction itself. Raises DamagedError when the file is not a readable
    journal or was written by an incompatible newer hs-tx.
    """
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS:
            db.execute(pragma)
        _migrate(db, path)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise DamagedError(
            f"journal {path} is unreadable: {exc}",
            f"move it aside (mv {path} {path}.broken) to start a new journal; "
            "snapshots of earlier runs stay on disk for a manual restore",
        ) from exc
    except BaseException:
        db.close()
        raise
    return db


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


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the journal to our head revision, or accept a compatible newer one."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    current = None
    if "alembic_version" in tables:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        current = row[0] if row else None
    if current == REVISIONS[-1]:
        return
    if current is not None and current not in REVISIONS:
        _check_newer_compatible(db, path, current)
        return
    _run_alembic_upgrade(path)


def _check_newer_compatible(db: sqlite3.Connection, path: Path, revision: str) -> None:
    """Accept a journal migrated by a newer hs-tx only if its changes were additive."""
    row = db.execute("SELECT value FROM hs_tx_meta WHERE key = 'compat'").fetchone()
    level = row[0] if row else None
    if level is None or int(level) > COMPAT_LEVEL:
        raise DamagedError(
            f"journal {path} has schema {revision} (compat level {level}) from a newer hs-tx",
            "install that newer hs-tx again, or move the journal aside to start a new one",
        )


def _run_alembic_upgrade(path: Path) -> None:
    """Apply the Alembic migrations shipped with the package to the journal at `path`,
    on a connection of their own with the journal's pragmas.

    Raises sqlite3.DatabaseError when the file cannot be migrated.
    """
    from importlib import resources

    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import DBAPIError

    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _set_pragmas)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("hs_txupdate.migrations")))
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
    except DBAPIError as exc:
        if isinstance(exc.orig, sqlite3.DatabaseError):
            raise exc.orig from exc
        raise
    finally:
        engine.dispose()


def _set_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    for pragma in PRAGMAS:
        dbapi_connection.execute(pragma)
