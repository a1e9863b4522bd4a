"""The state-dir lock: one command that changes anything at a time.

flock on `state_dir/lock`; the kernel drops it when the holder dies, so a
stale lock never blocks. The file's text names the holder (pid, transaction)
for the message a second run prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from ..base.errors import LockedError


def _holder_text(fd: int) -> str:
    """What the holder wrote into the lock file (pid, transaction, since when)."""
    return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()


def lock_holder(path: Path) -> str | None:
    """Who holds the lock at `path` (its text), or None when nobody does.

    Probes with a shared non-blocking flock on a separate descriptor, which
    never disturbs the holder.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(fd) or "unknown holder"
    finally:
        os.close(fd)
    return None


class StateLock:
    """An exclusive flock on the lock file. Use as a context manager."""

    def __init__(self, path: Path, wait: bool = False) -> None:
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        if self._fd is not None:  # adopted: already held
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError as exc:
            holder = _holder_text(fd) or "unknown"
            os.close(fd)
            raise LockedError(
                f"another hs-tx run holds the lock ({holder})",
                "wait for it to finish, or run again with --wait",
            ) from exc
        self._fd = fd
        self.set_holder(None)
        return self

    @classmethod
    def adopt(cls, path: Path, fd: int) -> StateLock:
        """The lock a previous image of this process took and passed on through execve
        (the open file description, and with it the flock, survived the exec)."""
        lock = cls(path)
        lock._fd = fd
        os.set_inheritable(fd, False)
        return lock

    @property
    def fd(self) -> int:
        """The locked file descriptor (for passing the lock on through execve)."""
        assert self._fd is not None
        return self._fd

    def set_holder(self, tx_id: int | None) -> None:
        """Write who holds the lock (pid and, once known, the transaction id)."""
        assert self._fd is not None
        text = f"pid {os.getpid()}, transaction {tx_id if tx_id is not None else 'none yet'}"
        text += f", since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):  # a full disk: the flock holds all the same
            os.pwrite(self._fd, text.encode(), 0)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
