"""Copying a live SQLite database consistently: SQLite's online backup API.

A file copy of a database that is being written (or of its main file without
its `-wal`) may not be a database at all; the backup API copies a consistent
state whatever the writers do, and writing through it leaves no stale WAL
beside the target. Used by the sqlite snapshot backend and the compat
StateManager alike. Standard library only; sqlite3 is imported when used.
"""

from __future__ import annotations

import os
from pathlib import Path


def copy_database(
    source: str | os.PathLike[str], target: str | os.PathLike[str], immutable: bool = False
) -> None:
    """Copy the existing SQLite database `source` into `target` (created when missing)
    through the backup API. `immutable`: `source` is a copy nobody writes (a snapshot),
    read without locks, so no `-wal` or `-shm` is left beside it. Raises
    FileNotFoundError, OSError or sqlite3.Error."""
    import sqlite3  # only what copies databases pays for it

    if not os.path.isfile(source):
        raise FileNotFoundError(f"no database file {source}")
    mode = "mode=ro&immutable=1" if immutable else "mode=ro"
    src = sqlite3.connect(f"{Path(source).absolute().as_uri()}?{mode}", uri=True)
    try:
        dst = sqlite3.connect(os.fspath(target))
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
