"""What every command gets: configuration, journal, service manager, output."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..base import activity
from ..base.errors import HsTxError
from ..base.fsio import ensure_private_dir, fsync_dir
from .config import Config
from .lock import StateLock
from .services import ServiceManager

if TYPE_CHECKING:  # SQLAlchemy is opened only by commands that read or write the journal
    from ..journal import Journal


@dataclass
class Context:
    """A command's view of the world. `log` lines go to stderr (stdout stays clean)."""

    config: Config
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _journal: Journal | None = None

    @property
    def journal(self) -> Journal:
        """The journal, opened (and the state dir created 0700) on first use."""
        if self._journal is None:
            from ..journal import Journal

            ensure_state_dir(self.config.state_dir)
            self._journal = Journal(self.config.journal_path)
        return self._journal

    def lock(self, wait: bool = False) -> StateLock:
        """The state-dir lock (the state dir is created 0700 first if missing)."""
        ensure_state_dir(self.config.state_dir)
        return StateLock(self.config.lock_path, wait)

    @property
    def services(self) -> ServiceManager:
        """The configured service manager."""
        return ServiceManager.from_config(self.config)

    def log(self, message: str) -> None:
        """One progress or warning line for the operator, on stderr."""
        activity.interrupt()  # a live progress line is drawn again at its next tick
        self.err.write(message if message.endswith("\n") else message + "\n")
        self.err.flush()

    def orphan_snapshots(self) -> list[str]:
        """The transactions' snapshot dirs in the state dir (by name) when the journal
        that recorded them is gone; [] when the journal is there."""
        snapshots = self.config.snapshots_dir
        if self.config.journal_path.exists() or not snapshots.is_dir():
            return []
        return sorted(p.name for p in snapshots.iterdir())

    def journal_missing(self) -> str | None:
        """Why the state dir shows a journal existed though its file is gone (the
        snapshots dir every transaction that snapshotted left), or None."""
        if self.config.journal_path.exists() or not self.config.snapshots_dir.is_dir():
            return None
        orphans = self.orphan_snapshots()
        held = f"the snapshots of {len(orphans)} transaction(s)" if orphans else "a snapshots dir"
        return f"the journal {self.config.journal_path} is missing, but the state dir holds {held}"

    def close(self) -> None:
        """Close the journal if it was opened (saying so when what it still had to
        write could not be written: the run's own error, if any, was reported first)."""
        if self._journal is not None:
            journal, self._journal = self._journal, None
            try:
                journal.close()
            except HsTxError as exc:
                self.log(f"hs-tx: warning: {exc}")


def who() -> tuple[str, str]:
    """The user and host to record on a transaction."""
    import getpass  # here: only a run that opens a transaction asks

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, socket.gethostname()


def ensure_state_dir(path: Path) -> None:
    """Create the state dir `path` (0700, parents as usual) if it is missing, durably.

    On btrfs it is made a subvolume of its own, so a snapshot of the subvolume around
    it holds none of the journal, and taking one never first flushes the journal's
    writes (these made the snapshot step grow with the size of the tree beside it);
    where btrfs refuses, a plain directory. An existing state dir is left as it is.
    """
    if path.is_dir():
        return
    from ..snapshot.btrfs import is_btrfs  # only here: every command imports this module
    from ..snapshot.subvol import create_subvolume

    path.parent.mkdir(parents=True, exist_ok=True)
    if is_btrfs(path.parent):
        try:
            create_subvolume(path, 0o700)
        except OSError:
            pass  # not allowed here, or made meanwhile: a plain directory serves
        else:
            fsync_dir(path.parent)
            return
    ensure_private_dir(path)
