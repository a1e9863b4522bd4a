"""The Linux calls the audit needs that Python lacks, made on libc through ctypes:
fanotify_init/fanotify_mark, name_to_handle_at/open_by_handle_at, the fsid of
fstatfs, unshare/setns of the pid namespace new children land in, and a detached
mount (fsopen/fsmount) of a btrfs filesystem's top-level subvolume."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from typing import Any

from .events import WATCHED_MASK

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_UNLIMITED_QUEUE = 0x10
FAN_REPORT_FID = 0x200
FAN_REPORT_DFID_NAME = 0x400 | 0x800
FAN_REPORT_TARGET_FID = 0x1000
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
AT_FDCWD = -100
CLONE_NEWPID = 0x20000000
MAX_HANDLE_SZ = 128
# the new mount API (x86_64 and aarch64 share these numbers since Linux 5.2)
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432
_FSOPEN_CLOEXEC = _FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 0, 1, 6
_MOUNT_ATTR_RDONLY = 0x1

GROUP_FLAGS = (
    FAN_CLASS_NOTIF
    | FAN_REPORT_DFID_NAME
    | FAN_REPORT_FID
    | FAN_UNLIMITED_QUEUE
    | FAN_NONBLOCK
    | FAN_CLOEXEC
)

_libc = ctypes.CDLL(None, use_errno=True)
_STATFS_SIZE = 120  # struct statfs on 64-bit Linux
_STATFS_FSID = slice(56, 64)  # its f_fsid


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    """Return the libc function `name` typed, or None when libc lacks it."""
    fn = getattr(_libc, name, None)
    if fn is not None:
        fn.restype = restype
        fn.argtypes = list(argtypes)
    return fn


_c = ctypes
_fanotify_init = _fn("fanotify_init", _c.c_int, _c.c_uint, _c.c_uint)
_fanotify_mark = _fn(
    "fanotify_mark", _c.c_int, _c.c_int, _c.c_uint, _c.c_uint64, _c.c_int, _c.c_char_p
)
_open_by_handle_at = _fn("open_by_handle_at", _c.c_int, _c.c_int, _c.c_char_p, _c.c_int)
_name_to_handle_at = _fn(
    "name_to_handle_at", _c.c_int, _c.c_int, _c.c_char_p, _c.c_char_p, _c.c_void_p, _c.c_int
)
_fstatfs = _fn("fstatfs", _c.c_int, _c.c_int, _c.c_char_p)
_unshare = _fn("unshare", _c.c_int, _c.c_int)
_syscall = _fn("syscall", _c.c_long)  # variadic: each call passes typed arguments
_setns = _fn("setns", _c.c_int, _c.c_int, _c.c_int)


def _call(fn: Any, what: str, *args: Any) -> int:
    """Call a libc function; return its result, or raise OSError naming `what`
    (ENOSYS when libc lacks the function)."""
    if fn is None:
        raise OSError(errno.ENOSYS, f"{what}: not provided by libc")
    result = int(fn(*args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {errno.errorcode.get(err, err)} ({os.strerror(err)})")
    return result


def fanotify_group() -> int:
    """Create the audit's fanotify group and return its fd (close-on-exec, non-blocking).

    Asks for target fids too (kernel 5.17+) and does without them on EINVAL.
    Raises OSError (EPERM without CAP_SYS_ADMIN, ENOSYS, EINVAL on old kernels).
    """
    try:
        return _call(
            _fanotify_init, "fanotify_init", GROUP_FLAGS | FAN_REPORT_TARGET_FID, os.O_RDONLY
        )
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return _call(_fanotify_init, "fanotify_init", GROUP_FLAGS, os.O_RDONLY)


def mark_filesystem(group_fd: int, path: str, dir_fd: int = AT_FDCWD) -> None:
    """Watch the whole filesystem holding `path` (relative to `dir_fd` when given)
    for entry and content changes.

    Raises OSError (EXDEV through a btrfs subvolume, EOPNOTSUPP on overlayfs, ...).
    """
    flags = FAN_MARK_ADD | FAN_MARK_FILESYSTEM
    _call(_fanotify_mark, f"fanotify_mark {path}", group_fd, flags, WATCHED_MASK, dir_fd,
          os.fsencode(path))  # fmt: skip


def _sys(what: str, number: int, *args: int | bytes | None) -> int:
    """Make system call `number` (ints passed as C ints, bytes as strings, None as
    NULL); return its result or raise OSError naming `what`."""
    typed = [ctypes.c_int(a) if isinstance(a, int) else ctypes.c_char_p(a) for a in args]
    return _call(_syscall, what, ctypes.c_long(number), *typed)


def btrfs_top_level(source: str) -> int:
    """Mount the top-level subvolume (subvolid=5) of the btrfs filesystem on the
    device `source`, read-only and attached nowhere (no mount point, no other
    process sees it), and return an fd of its root directory (close-on-exec). The
    mount goes away with the last fd. Paths read back from fds opened through it
    start at the filesystem's top ("/@/etc/..."). Raises OSError."""
    fs_fd = _sys("fsopen btrfs", _SYS_FSOPEN, b"btrfs", _FSOPEN_CLOEXEC)
    try:
        for kind, key, value in (
            (_FSCONFIG_SET_STRING, b"source", os.fsencode(source)),
            (_FSCONFIG_SET_STRING, b"subvolid", b"5"),
            (_FSCONFIG_SET_FLAG, b"ro", None),
            (_FSCONFIG_CMD_CREATE, None, None),
        ):
            _sys(f"fsconfig {source}", _SYS_FSCONFIG, fs_fd, kind, key, value, 0)
        mount_fd = _sys(
            f"fsmount {source}", _SYS_FSMOUNT, fs_fd, _FSMOUNT_CLOEXEC, _MOUNT_ATTR_RDONLY
        )
    finally:
        os.close(fs_fd)
    try:  # an fd that fanotify_mark and open_by_handle_at take (not O_PATH)
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=mount_fd)
    finally:
        os.close(mount_fd)


def open_by_handle(mount_fd: int, handle: bytes) -> int:
    """Given a `struct file_handle` of the filesystem of `mount_fd`, return an
    O_PATH fd of the object. Raises OSError (ESTALE once it is deleted)."""
    buf = ctypes.create_string_buffer(handle, len(handle))
    return _call(_open_by_handle_at, "open_by_handle_at", mount_fd, buf, os.O_PATH)


def handle_of_path(path: str, dir_fd: int = AT_FDCWD) -> bytes:
    """Return the `struct file_handle` bytes of `path` (relative to `dir_fd` when
    given; symlinks not followed). Raises OSError (EOPNOTSUPP where the filesystem
    has no handles)."""
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    ctypes.memmove(buf, MAX_HANDLE_SZ.to_bytes(4, sys.byteorder), 4)  # handle_bytes in
    mount_id = ctypes.c_int()
    _call(_name_to_handle_at, f"name_to_handle_at {path}", dir_fd, os.fsencode(path), buf,
          ctypes.byref(mount_id), 0)  # fmt: skip
    size = int.from_bytes(buf.raw[:4], sys.byteorder)
    return buf.raw[: 8 + size]


def fsid_of_fd(fd: int) -> bytes:
    """Return the 8-byte fsid (statfs f_fsid) of the filesystem `fd` is on, as
    fanotify reports it. Raises OSError (ENOSYS on a 32-bit system)."""
    if ctypes.sizeof(ctypes.c_long) != 8:
        raise OSError(errno.ENOSYS, "fstatfs layout: only 64-bit Linux is supported")
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    _call(_fstatfs, "fstatfs", fd, buf)
    return buf.raw[_STATFS_FSID]


class PidNamespace:
    """The pid namespace this process's new children land in (pid_for_children).

    `enter()` saves an fd of this process's own pid namespace and unshares a new
    one: the next child becomes its PID 1. `leave()` points pid_for_children back
    at the saved namespace; `rejoin()` at the new one again (needs its PID 1's pid).
    While pid_for_children differs from the process's own namespace, the kernel
    refuses to start threads (clone with CLONE_THREAD: EINVAL).
    """

    def __init__(self, own_fd: int) -> None:
        self._own_fd = own_fd
        self._new_fd = -1

    @classmethod
    def enter(cls) -> PidNamespace:
        """Unshare a new pid namespace for children. Raises OSError (EPERM, ...)."""
        fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _call(_unshare, "unshare(CLONE_NEWPID)", CLONE_NEWPID)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    @property
    def active(self) -> bool:
        """True until `leave()` restored the own namespace for good."""
        return self._own_fd >= 0

    def hold(self, init_pid: int) -> None:
        """Keep an fd of the new namespace, whose PID 1 is `init_pid` (as seen
        from here), so `rejoin()` can return to it. Raises OSError."""
        self._new_fd = os.open(f"/proc/{init_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def own(self) -> None:
        """Point pid_for_children at this process's own namespace (temporarily)."""
        _call(_setns, "setns(own pid namespace)", self._own_fd, CLONE_NEWPID)

    def rejoin(self) -> None:
        """Point pid_for_children at the new namespace again (after `own()`)."""
        _call(_setns, "setns(audit pid namespace)", self._new_fd, CLONE_NEWPID)

    def leave(self) -> None:
        """Point pid_for_children back at the own namespace for good; idempotent.
        Raises OSError when setns fails (the fds are closed anyway)."""
        if self._own_fd < 0:
            return
        try:
            self.own()
        finally:
            os.close(self._own_fd)
            self._own_fd = -1
            if self._new_fd >= 0:
                os.close(self._new_fd)
                self._new_fd = -1
