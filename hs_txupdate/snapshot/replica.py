"""Exact copies of single entries, for a restore: a regular file reflinked where the
filesystem can, else copied keeping its holes; a symlink, fifo, device node or socket
made anew; then the owner, mode, extended attributes and times put on."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from ..base.errors import ScopeError
from ..base.fsio import fsync_path
from .entries import read_xattrs
from .restored import Xattrs

FICLONE = 0x40049409


def materialize(
    source: Path,
    dest: Path,
    st: os.stat_result | None = None,
    durable: bool = True,
    xattrs: Xattrs | None = None,
) -> bool:
    """Create `dest` as an exact copy of the non-directory entry `source`; return True
    when that wrote file data (a copy), False when it wrote only metadata (a reflink, a
    symlink, ...), which the filesystem's journal keeps in order with what follows.

    Regular files are reflinked where the filesystem can, else copied keeping
    holes; then owner, mode, xattrs (ACLs, capabilities; `xattrs` when the caller
    has read them) and times are set and, `durable`, the file is fsynced (else its
    caller syncs).
    """
    st = st or os.lstat(source)
    mode = st.st_mode
    copied = False
    if stat.S_ISREG(mode):
        copied = _copy_file(source, dest)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), dest)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dest, 0o600)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(dest, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    elif stat.S_ISSOCK(mode):  # kept by btrfs snapshots: the inode, not a listener
        os.mknod(dest, stat.S_IFSOCK | 0o600)
    else:
        raise ScopeError(f"cannot restore {source}: unsupported file type", "")
    apply_metadata(source, dest, st, xattrs)
    if durable and stat.S_ISREG(mode):
        fsync_path(dest)
    return copied


def _copy_file(source: Path, dest: Path) -> bool:
    """Reflink, else copy, `source` to the new file `dest`; True when it copied."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.ioctl(dst, FICLONE, src)
                return False
            except OSError:
                _sparse_copy(src, dst)
                return True
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _sparse_copy(src: int, dst: int) -> None:
    """Copy only the data regions of `src`, so holes stay holes."""
    size = os.fstat(src).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(src, start, os.SEEK_HOLE)
        while start < end:
            copied = os.copy_file_range(src, dst, end - start, start, start)
            if copied == 0:
                break
            start += copied
        offset = end
    os.ftruncate(dst, size)


def apply_metadata(
    source: Path, dest: Path, st: os.stat_result | None = None, xattrs: Xattrs | None = None
) -> None:
    """Give `dest` the owner, mode, xattrs and times of `source` (no symlink following);
    `st` and `xattrs` are its lstat and extended attributes when the caller has them.

    Order matters: chown clears set-id bits and file capabilities, so mode and
    xattrs come after it, and times come last.
    """
    st = st or os.lstat(source)
    os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dest, stat.S_IMODE(st.st_mode))
    wanted = read_xattrs(source) if xattrs is None else dict(xattrs)
    present = read_xattrs(dest)
    for name in present.keys() - wanted.keys():
        os.removexattr(dest, name, follow_symlinks=False)
    for name, value in wanted.items():
        if present.get(name) != value:
            os.setxattr(dest, name, value, follow_symlinks=False)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
