"""What every command gets: configuration, journal, service manager, output."""

from __future__ import annotations

import getpass
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from ..base.fsio import ensure_private_dir
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

            ensure_private_dir(self.config.state_dir)
            self._journal = Journal(self.config.journal_path)
        return self._journal

    def lock(self, wait: bool = False) -> StateLock:
        """The state-dir lock (the state dir is created 0700 first if missing)."""
        ensure_private_dir(self.config.state_dir)
        return StateLock(self.config.lock_path, wait)

    @property
    def services(self) -> ServiceManager:
        """The configured service manager."""
        return ServiceManager.from_config(self.config)

    def log(self, message: str) -> None:
        """One progress or warning line for the operator, on stderr."""
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
        """Close the journal if it was opened."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def who() -> tuple[str, str]:
    """The user and host to record on a transaction."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, socket.gethostname()
