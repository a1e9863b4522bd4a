"""How the `hs_tx` module looks at and writes unit files.

Its own small copy of the durable-write recipe (temp file, fsync, rename,
fsync dir): the module must not import hs_txupdate.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

UNIT_MODE = 0o644
DIR_MODE = 0o755

# What a run finds at a unit's installed path.
CURRENT = "current"  # same bytes, regular file, mode 0644
MISSING = "missing"  # nothing there: install it (and enable it when listed)
DIFFERS = "differs"  # other bytes or mode: replace it
OPERATOR = "operator"  # a symlink (`systemctl mask` or `link`): the operator's, left alone


@dataclass(frozen=True)
class UnitPlan:
    """One unit: the module's copy, where it goes, and what is there now."""

    name: str
    data: bytes
    target: Path
    state: str

    @property
    def outdated(self) -> bool:
        """Whether a run writes this unit."""
        return self.state in (MISSING, DIFFERS)


def installed_state(target: Path, data: bytes) -> str:
    """What is at `target` compared with `data` (one of the states above).

    Raises OSError when it cannot be looked at (e.g. unit_dir is a file).
    """
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return MISSING
    if stat.S_ISLNK(st.st_mode):
        return OPERATOR
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != UNIT_MODE:
        return DIFFERS
    if st.st_size != len(data):
        return DIFFERS
    return CURRENT if target.read_bytes() == data else DIFFERS


def ensure_dir(path: Path) -> list[Path]:
    """Create `path` and any missing parents, each 0755, durably; return those created."""
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        os.mkdir(directory, DIR_MODE)
        os.chmod(directory, DIR_MODE)  # whatever the umask says
        fsync_dir(directory.parent)
    return list(reversed(missing))


def write_durably(target: Path, data: bytes, mode: int = UNIT_MODE) -> None:
    """Replace `target` with `data` at `mode`: temp file, fsync, rename, fsync dir.

    A crash leaves the old file or the new one, never a torn one; a symlink at
    `target` would be replaced, not followed (callers leave those alone).
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of an earlier crashed run with our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask says
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
