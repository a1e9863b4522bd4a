"""What btrfs says about one subvolume, read with BTRFS_IOC_GET_SUBVOL_INFO (Linux 4.18+).

The identity hs-tx records for a snapshot is its UUID and its ctransid, the
transaction of its last change: a write into the subvolume (possible only after
it was set writable) moves ctransid, while a balance or a scrub, which rewrite
where its metadata lies and so move its plain generation, do not.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

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


# _IOR(BTRFS_IOCTL_MAGIC, 60, struct btrfs_ioctl_get_subvol_info_args)
_GET_SUBVOL_INFO = (2 << 30) | (ctypes.sizeof(_SubvolInfo) << 16) | (0x94 << 8) | 60


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
        info = _SubvolInfo()
        fcntl.ioctl(fd, _GET_SUBVOL_INFO, info)
    except OSError:
        return None
    finally:
        os.close(fd)
    readonly = bool(info.flags & _ROOT_SUBVOL_RDONLY)
    return SubvolumeIdentity(str(uuid.UUID(bytes=bytes(info.uuid))), info.ctransid, readonly)
