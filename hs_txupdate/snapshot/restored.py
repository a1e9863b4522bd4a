"""Checking a restore: every entry it put back is read again from disk and compared
with the snapshot's, so "as before" is something hs-tx saw, not something it assumes.

What is compared of an entry: its type, mode, owner, mtime, device numbers, symlink
target, extended attributes (ACLs, capabilities) and, for a file, its size and
bytes. Not its atime or ctime (no restore can keep a ctime), not its link count
(the entries a restore leaves alone hold links too), not a directory's size (it
depends on the filesystem and on entries a narrowed restore leaves alone).
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import DamagedError
from .entries import entry_type, join, read_xattrs

_PIECE = 1 << 20
# FS_IOC_FIEMAP (linux/fiemap.h): struct fiemap, then struct fiemap_extent each
_FS_IOC_FIEMAP = 0xC020660B
_HEAD = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQ16xI12x")  # logical, physical, length, flags
_ALL = (1 << 64) - 1
_MAX_EXTENTS = 64
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1
# unknown, delalloc, encoded, encrypted, not aligned, inline, tail: the address does not
# name the bytes alone
_UNSURE = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400
_PLACE = 0x800  # unwritten (reads as zeros): all else of the flags says nothing of bytes


Xattrs = tuple[tuple[str, bytes], ...]  # an entry's extended attributes, sorted by name


@dataclass(frozen=True)
class Seen:
    """What the check compares of one entry (see module docstring)."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int | None  # None for a directory
    rdev: int
    target: str | None  # a symlink's
    xattrs: Xattrs

    @classmethod
    def of(cls, path: Path, st: os.stat_result | None = None) -> Seen:
        """What the entry at `path` (lstat `st`, else read now) is. Raises OSError."""
        st = st or os.lstat(path)
        kind = entry_type(st)
        return cls(
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            None if kind == "d" else st.st_size,
            st.st_rdev if kind in "cb" else 0,
            os.readlink(path) if kind == "l" else None,
            tuple(sorted(read_xattrs(path).items())),
        )


@dataclass(frozen=True)
class Put:
    """An entry a restore put back: its path relative to the tree, what the snapshot
    holds there, and where the snapshot's copy of it is (its inode, and its path in the
    reference, which a disposable reference's entry has been moved away from)."""

    rel: str
    want: Seen
    inode: tuple[int, int]
    source: Path


def expect(rel: str, source: Path, st: os.stat_result) -> Put:
    """What the reference entry `source` (lstat `st`) is, read before the restore
    uses it, for `check_put` once the entry is in place. Raises OSError."""
    return Put(rel, Seen.of(source, st), (st.st_dev, st.st_ino), source)


def check_put(live: Path, put: Put) -> None:
    """Check the entry `put.rel` under `live` is the snapshot's: the same entry seen
    again, and the same bytes (a file that is the snapshot's inode itself, moved
    into place or linked to it, is its bytes).

    Raises DamagedError naming the entry and what differs."""
    st = check_entry(live, put.rel, put.want)
    moved = (st.st_dev, st.st_ino) == put.inode
    if stat.S_ISREG(st.st_mode) and not moved and not _same_bytes(join(live, put.rel), put.source):
        raise _differs(live, put.rel, "its bytes are not the snapshot's")


def check_entry(live: Path, rel: str, want: Seen) -> os.stat_result:
    """Check the entry `rel` under `live` (a directory whose times were put back, or
    the entry of check_put) is as `want` (the snapshot's); return its lstat.
    Raises DamagedError naming it and what differs."""
    path = join(live, rel)
    try:
        st = os.lstat(path)
        seen = Seen.of(path, st)
    except FileNotFoundError:
        raise _differs(live, rel, "it is missing") from None
    _compare(live, rel, seen, want)
    return st


def check_gone(live: Path, rel: str) -> None:
    """Check the entry `rel` under `live`, which the snapshot does not hold, is gone.
    Raises DamagedError when it is still there."""
    if os.path.lexists(join(live, rel)):
        raise _differs(live, rel, "it is still there, and the snapshot has no such entry")


def _compare(live: Path, rel: str, seen: Seen, want: Seen) -> None:
    for name in Seen.__dataclass_fields__:
        mine, theirs = getattr(seen, name), getattr(want, name)
        if mine != theirs:
            shown = f"{_show(name, mine)}, the snapshot's {_show(name, theirs)}"
            raise _differs(live, rel, f"its {_WHAT.get(name, name)} is {shown}")


_WHAT = {"xattrs": "extended attributes", "mtime_ns": "mtime (ns)", "rdev": "device number"}


def _show(name: str, value: object) -> str:
    if isinstance(value, tuple):  # extended attributes: their names (values may be binary)
        return "[" + ", ".join(str(item[0]) for item in value) + "]"
    return oct(value) if name == "mode" and isinstance(value, int) else repr(value)


def _same_bytes(a: Path, b: Path) -> bool:
    """True when the regular files `a` and `b` (of one size) hold the same bytes: they
    map the same blocks of the disk at the same offsets (a reflink), or, read, the
    same bytes. Raises OSError."""
    fa = _open(a)
    try:
        fb = _open(b)
        try:
            mapped = _extents(fa)
            if mapped is not None and mapped == _extents(fb):
                return True
            while True:
                one, two = os.read(fa, _PIECE), os.read(fb, _PIECE)
                if one != two:
                    return False
                if not one:
                    return True
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _extents(fd: int) -> list[tuple[int, int, int, int]] | None:
    """Where the file `fd` lies on its disk: (offset, disk address, length, flags) of
    each extent (FS_IOC_FIEMAP); None when that does not say which bytes it holds (an
    extent not yet written out, compressed, inline, of unknown place; too many
    extents; a filesystem that cannot say)."""
    buf = bytearray(_HEAD.size + _EXTENT.size * _MAX_EXTENTS)
    # a write not yet on disk still shows the old blocks: sync the file's data first
    _HEAD.pack_into(buf, 0, 0, _ALL, _FIEMAP_FLAG_SYNC, 0, _MAX_EXTENTS, 0)
    try:
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
    except OSError:
        return None
    mapped = _HEAD.unpack_from(buf)[3]
    extents = [_EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size) for i in range(mapped)]
    if any(flags & _UNSURE for *_, flags in extents):
        return None
    if mapped == _MAX_EXTENTS and not extents[-1][3] & _FIEMAP_EXTENT_LAST:
        return None
    return [
        (logical, physical, length, flags & _PLACE) for logical, physical, length, flags in extents
    ]


def _open(path: Path) -> int:
    """Open `path` to read without moving its access time (the restore set it), which
    only the owner or root may ask for. Raises OSError."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


# the hint of every check after a restore that failed (a database's too)
DISTURBED = (
    "something wrote there while hs-tx restored it: find what did, then run"
    " `hs-tx recover` to put it back again"
)


def _differs(live: Path, rel: str, what: str) -> DamagedError:
    message = f"after the restore, {join(live, rel)} is not what its snapshot holds: {what}"
    return DamagedError(message, DISTURBED)
