"""The sqlite backend: a consistent copy of a live SQLite database, taken and put back
through SQLite's online backup API.

A file copy (tar) of a database that is being written, or of its main file
without its `-wal`, may not be a database at all; the backup API copies a
consistent state whatever the writers do, and restoring through it leaves no
stale WAL beside the live file. Used for the databases a module names in a
StateManager backup; copies live in `snapshots_dir/<journal-uuid>-<txid>/<n>.sqlite`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..base.dbcopy import copy_database
from ..base.errors import DamagedError
from ..base.fsio import publish
from .base import Captured, SnapshotTarget
from .files import recorded_file, remove_file_snapshot, sha256_file, verified_file


class SqliteBackend:
    """Consistent database copies; the ref is the copy's path."""

    name = "sqlite"
    disposable = False

    def __init__(self, snapshots_dir: Path) -> None:
        self.snapshots_dir = snapshots_dir

    def supports(self, path: Path) -> bool:
        """True when `path` is a regular file (whether it is a database shows at capture)."""
        return path.is_file()

    def required_space(self, path: Path, size: int) -> list[tuple[Path, int]]:
        """The copy in the state dir."""
        return [(self.snapshots_dir, size)]

    def copy_path(self, target: SnapshotTarget) -> Path:
        """Where the copy of `target` lives."""
        return self.snapshots_dir / target.tx / f"{target.n}.sqlite"

    def capture(self, target: SnapshotTarget) -> Captured:
        """Copy the database durably and record the copy's checksum.

        Raises sqlite3.Error when the file is not a readable database.
        """
        final = self.copy_path(target)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = final.with_name(final.name + ".partial")
        partial.unlink(missing_ok=True)
        copy_database(target.path, partial)
        checksum, size = sha256_file(partial), partial.stat().st_size
        publish(partial, final)
        return Captured(ref=str(final), size=size, checksum=checksum)

    def manifest_root(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The live file: what it was when copied is what the manifest records."""
        return target.path

    @contextmanager
    def reference(
        self, target: SnapshotTarget, captured: Captured, entries: list[str] | None = None
    ) -> Iterator[Path]:
        """The verified copy."""
        yield self.check(target, captured)

    def check(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The copy, after checking it is there with the recorded checksum.

        Raises DamagedError otherwise.
        """
        copy = recorded_file(captured.ref, target, self.copy_path(target), self.snapshots_dir)
        return verified_file(copy, captured.checksum, "database copy", target)

    def delete(self, target: SnapshotTarget, ref: str | None) -> None:
        """Remove the copy (and a partial one); missing is fine.

        Raises DamagedError when `ref` is not a file of the snapshots dir.
        """
        remove_file_snapshot(recorded_file(ref, target, self.copy_path(target), self.snapshots_dir))

    def restore(self, target: SnapshotTarget, captured: Captured) -> None:
        """Put the database back as copied, through the backup API into the live file
        (created if it was deleted), then read it back the same way: a copy of the
        restored database must have the copy's checksum (the backup API writes the
        same bytes from the same database). Raises DamagedError for a bad copy or a
        database that is not the copy's once restored."""
        copy = self.check(target, captured)
        target.path.parent.mkdir(parents=True, exist_ok=True)
        copy_database(copy, target.path, immutable=True)
        again = copy.with_name(copy.name + ".check")
        try:
            copy_database(target.path, again)
            same = sha256_file(again) == captured.checksum
        finally:
            again.unlink(missing_ok=True)
        if not same:
            from .restored import DISTURBED  # here: only a failed check needs it

            what = f"after the restore, the database {target.path} is not its copy {copy}"
            raise DamagedError(what, DISTURBED)
