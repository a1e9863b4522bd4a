"""The one place hs-tx writes files durably: temp file, fsync, rename, fsync dir.

Also the other kernel calls every layer needs to make changes durable or atomic:
fsync of a directory, syncfs of a filesystem, starting a file's writeback, and
renameat2(RENAME_EXCHANGE).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path


def _fsync(path: str | os.PathLike[str], flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (new names, renames, unlinks) to disk."""
    _fsync(path, os.O_DIRECTORY)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush one existing regular file's data and metadata to disk."""
    _fsync(path, os.O_NOFOLLOW)


def write_new(path: str | os.PathLike[str], data: bytes | Iterable[bytes], mode: int) -> None:
    """Create the file `path` (it must not exist yet) with `data` (bytes, or the pieces
    of a file too big to hold at once) and `mode`, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask says
        for piece in [data] if isinstance(data, bytes) else data:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(
    path: str | os.PathLike[str], data: bytes | Iterable[bytes], mode: int = 0o600
) -> None:
    """Replace `path` with `data` (bytes, or pieces: see write_new) atomically and durably.

    Writes a temp file beside it, fsyncs it, renames it over `path` and fsyncs
    the directory, so a crash leaves either the old or the new file, never a mix.
    Raises OSError on failure (the temp file is removed).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by an earlier process with the same pid
    try:
        write_new(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def publish(partial: Path, final: Path) -> None:
    """Make the complete file `partial` (written by someone else, e.g. tar) durable
    under its final name: fsync it, rename it over `final`, fsync the directory."""
    fsync_path(partial)
    os.rename(partial, final)
    fsync_dir(final.parent)


def ensure_private_dir(path: Path) -> None:
    """Create `path` as a 0700 directory if it is missing (parents as usual), durably."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(path, 0o700)
    fsync_dir(path.parent)


def syncfs(path: str | os.PathLike[str]) -> None:
    """Flush every dirty page and inode of the filesystem holding `path` to disk.

    Modules write without fsync; before a transaction commits, whatever they
    wrote must be as durable as the commit record that claims it.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing a range of the open file `fd` to disk without
    waiting for it (sync_file_range WRITE), so a later fsync finds little left; the
    pages stay cached, for a restore that reads them soon. Raises OSError."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.sync_file_range
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    if call(fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE): at every moment
    each name holds one complete tree. Raises OSError when the kernel refuses."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))
