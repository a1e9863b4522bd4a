"""What btrfs says about one subvolume, read with BTRFS_IOC_GET_SUBVOL_INFO (Linux 4.18+).

The identity hs-tx records for a snapshot is its UUID and its ctransid, the
transaction of its last change: a write into the subvolume (possible only after
it was set writable) moves ctransid, while a balance or a scrub, which rewrite
where its metadata lies and so move its plain generation, do not.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..base.fsio import syncfs

SUBVOLUME_ROOT_INO = 256
_ROOT_SUBVOL_RDONLY = 1 << 0


class _Timespec(ctypes.Structure):
    _fields_ = (("sec", ctypes.c_uint64), ("nsec", ctypes.c_uint32))


class _SubvolInfo(ctypes.Structure):
    """struct btrfs_ioctl_get_subvol_info_args (linux/btrfs.h)."""

    _fields_ = (
        ("treeid", ctypes.c_uint64),
        ("name", ctypes.c_char * 256),
        ("parent_id", ctypes.c_uint64),
        ("dirid", ctypes.c_uint64),
        ("generation", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("uuid", ctypes.c_uint8 * 16),
        ("parent_uuid", ctypes.c_uint8 * 16),
        ("received_uuid", ctypes.c_uint8 * 16),
        ("ctransid", ctypes.c_uint64),
        ("otransid", ctypes.c_uint64),
        ("stransid", ctypes.c_uint64),
        ("rtransid", ctypes.c_uint64),
        ("ctime", _Timespec),
        ("otime", _Timespec),
        ("stime", _Timespec),
        ("rtime", _Timespec),
        ("reserved", ctypes.c_uint64 * 8),
    )


_IOC_WRITE, _IOC_READ = 1, 2
_BTRFS_IOCTL_MAGIC = 0x94


def _btrfs_ioctl(direction: int, number: int, args: type[ctypes.Structure]) -> int:
    """The request number of btrfs ioctl `number` taking `args` (the kernel's _IOC)."""
    return (direction << 30) | (ctypes.sizeof(args) << 16) | (_BTRFS_IOCTL_MAGIC << 8) | number


_GET_SUBVOL_INFO = _btrfs_ioctl(_IOC_READ, 60, _SubvolInfo)


class _VolArgsV2(ctypes.Structure):
    """struct btrfs_ioctl_vol_args_v2 (linux/btrfs.h), with a name."""

    _fields_ = (
        ("fd", ctypes.c_int64),
        ("transid", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("unused", ctypes.c_uint64 * 4),
        ("name", ctypes.c_char * 4040),
    )


class _VolArgs(ctypes.Structure):
    """struct btrfs_ioctl_vol_args (linux/btrfs.h)."""

    _fields_ = (("fd", ctypes.c_int64), ("name", ctypes.c_char * 4088))


_SNAP_CREATE_V2 = _btrfs_ioctl(_IOC_WRITE, 23, _VolArgsV2)
_SUBVOL_CREATE = _btrfs_ioctl(_IOC_WRITE, 14, _VolArgs)
_SNAP_DESTROY = _btrfs_ioctl(_IOC_WRITE, 15, _VolArgs)
_SUBVOL_RDONLY = 1 << 1


def snapshot_readonly(source: Path, store: Path, name: str) -> Path:
    """Take a read-only snapshot of the subvolume whose top directory is `source` as
    `store/name` (what `btrfs subvolume snapshot -r` does, without a process). btrfs
    creates a snapshot by committing a transaction, so it is on disk when this returns.
    Returns the snapshot's path. Raises OSError (EEXIST when it exists already)."""
    src = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        dst = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            args = _VolArgsV2(fd=src, flags=_SUBVOL_RDONLY, name=os.fsencode(name))
            fcntl.ioctl(dst, _SNAP_CREATE_V2, args)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return store / name


def delete_subvolume(path: Path, commit: bool = False) -> None:
    """Delete the subvolume (a snapshot, read-only or not) whose top directory is
    `path` (what `btrfs subvolume delete` does, without a process); with `commit`, the
    deletion is on disk when this returns (`--commit-after`), else it is in btrfs's
    next commit. Either way btrfs frees its blocks in the background. Raises OSError."""
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.ioctl(parent, _SNAP_DESTROY, _VolArgs(name=os.fsencode(path.name)))
    finally:
        os.close(parent)
    if commit:
        syncfs(path.parent)


def create_subvolume(path: Path, mode: int) -> None:
    """Create `path` as an empty btrfs subvolume with permissions `mode` (what
    `btrfs subvolume create` does, without a process); the directory holding it must
    lie on btrfs. Raises OSError (EEXIST when it exists already)."""
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.ioctl(parent, _SUBVOL_CREATE, _VolArgs(name=os.fsencode(path.name)))
    finally:
        os.close(parent)
    os.chmod(path, mode)


@dataclass(frozen=True)
class SubvolumeIdentity:
    """A subvolume's UUID, the transaction of its last change, and its read-only flag."""

    uuid: str
    ctransid: int
    readonly: bool


def subvolume_identity(path: Path) -> SubvolumeIdentity | None:
    """The identity of the subvolume whose top directory is `path` (no link followed);
    None when `path` is not the top of a btrfs subvolume."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_ino != SUBVOLUME_ROOT_INO:
            return None  # a directory inside a subvolume: the ioctl would describe that one
        info = _subvol_info(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    readonly = bool(info.flags & _ROOT_SUBVOL_RDONLY)
    return SubvolumeIdentity(_uuid_text(bytes(info.uuid)), info.ctransid, readonly)


def _subvol_info(fd: int) -> _SubvolInfo:
    """What btrfs says of the subvolume holding the directory `fd` is open on (of the
    subvolume itself when that is its top). Raises OSError."""
    info = _SubvolInfo()
    fcntl.ioctl(fd, _GET_SUBVOL_INFO, info)
    return info


class _SendArgs(ctypes.Structure):
    """struct btrfs_ioctl_send_args (linux/btrfs.h)."""

    _fields_ = (
        ("send_fd", ctypes.c_int64),
        ("clone_sources_count", ctypes.c_uint64),
        ("clone_sources", ctypes.c_void_p),
        ("parent_root", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("version", ctypes.c_uint32),
        ("reserved", ctypes.c_uint8 * 28),
    )


_SEND = _btrfs_ioctl(_IOC_WRITE, 38, _SendArgs)
_SEND_NO_FILE_DATA = 1


def send_without_data(parent: Path, later: Path, out: int) -> None:
    """Write into the file `out` the send stream (version 1, no file data) that turns
    the read-only snapshot `parent` into the read-only snapshot `later` of the same
    subvolume (their top directories): what `btrfs send --no-data -p` writes, without
    a process. Returns when all of it is written. Raises OSError."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    source, base = os.open(later, flags), os.open(parent, flags)
    try:
        root = int(_subvol_info(base).treeid)  # the parent's id, as `btrfs subvolume show`
        clones = (ctypes.c_uint64 * 1)(root)  # as btrfs send -p: the parent is a source
        args = _SendArgs(
            send_fd=out,
            clone_sources_count=1,
            clone_sources=ctypes.addressof(clones),
            parent_root=root,
            flags=_SEND_NO_FILE_DATA,
        )
        fcntl.ioctl(source, _SEND, args)
    finally:
        os.close(base)
        os.close(source)


class _InoPathArgs(ctypes.Structure):
    """struct btrfs_ioctl_ino_path_args (linux/btrfs.h)."""

    _fields_ = (
        ("inum", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 4),
        ("fspath", ctypes.c_uint64),
    )


_INO_PATHS = _btrfs_ioctl(_IOC_READ | _IOC_WRITE, 35, _InoPathArgs)
# struct btrfs_data_container: bytes_left, bytes_missing, elem_cnt, elem_missed, offsets
_CONTAINER_HEAD = 16


def inode_paths(subvolume: Path, ino: int, room: int = 1 << 16) -> list[str]:
    """Every path (relative to the subvolume's top directory `subvolume`) at which the
    inode `ino` of that subvolume is linked. Raises OSError (ENOENT: no such inode)."""
    while True:
        buf = ctypes.create_string_buffer(room)
        args = _InoPathArgs(inum=ino, size=room, fspath=ctypes.addressof(buf))
        fd = os.open(subvolume, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fcntl.ioctl(fd, _INO_PATHS, args)
        finally:
            os.close(fd)
        raw = buf.raw
        missing, count, missed = (int.from_bytes(raw[i : i + 4], sys.byteorder) for i in (4, 8, 12))
        if (missing or missed) and room < (1 << 24):
            room *= 4  # more links than fit: ask again with room for them
            continue
        base, paths = _CONTAINER_HEAD, []
        for k in range(count):
            offset = int.from_bytes(raw[base + 8 * k : base + 8 * k + 8], sys.byteorder)
            name = raw[base + offset : raw.index(b"\0", base + offset)]
            paths.append(os.fsdecode(name))
        return paths


class _RootRef(ctypes.Structure):
    _fields_ = (("treeid", ctypes.c_uint64), ("dirid", ctypes.c_uint64))


class _RootRefArgs(ctypes.Structure):
    """struct btrfs_ioctl_get_subvol_rootref_args (linux/btrfs.h)."""

    _fields_ = (
        ("min_treeid", ctypes.c_uint64),
        ("rootref", _RootRef * 255),
        ("num_items", ctypes.c_uint8),
        ("align", ctypes.c_uint8 * 7),
    )


class _LookupUserArgs(ctypes.Structure):
    """struct btrfs_ioctl_ino_lookup_user_args (linux/btrfs.h)."""

    _fields_ = (
        ("dirid", ctypes.c_uint64),
        ("treeid", ctypes.c_uint64),
        ("name", ctypes.c_char * 256),
        ("path", ctypes.c_char * 3824),
    )


_GET_SUBVOL_ROOTREF = _btrfs_ioctl(_IOC_READ | _IOC_WRITE, 61, _RootRefArgs)
_INO_LOOKUP_USER = _btrfs_ioctl(_IOC_READ | _IOC_WRITE, 62, _LookupUserArgs)


def child_subvolumes(subvolume: Path) -> list[str]:
    """The paths (relative to the top directory `subvolume`) of the subvolumes nested
    directly in that subvolume, read from btrfs (Linux 4.18+), not by walking it.
    Raises OSError."""
    fd = os.open(subvolume, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        refs: list[tuple[int, int]] = []
        args = _RootRefArgs(min_treeid=0)
        while True:
            try:
                fcntl.ioctl(fd, _GET_SUBVOL_ROOTREF, args)
                more = False
            except OSError as exc:
                if exc.errno != errno.EOVERFLOW:
                    raise
                more = True  # the kernel set min_treeid where to go on
            refs += [(r.treeid, r.dirid) for r in args.rootref[: args.num_items]]
            if not more:
                break
        paths = []
        for treeid, dirid in refs:
            lookup = _LookupUserArgs(dirid=dirid, treeid=treeid)
            fcntl.ioctl(fd, _INO_LOOKUP_USER, lookup)
            paths.append(os.fsdecode(lookup.path + lookup.name))
        return paths
    finally:
        os.close(fd)


def _uuid_text(raw: bytes) -> str:
    """16 bytes as a UUID is written (8-4-4-4-12 hex digits), as `btrfs` shows it."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
