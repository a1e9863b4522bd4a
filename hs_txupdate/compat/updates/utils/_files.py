"""Filesystem helpers the shim shares: owner lookup, exact copies, private dirs,
checksums. Durable writes are hs-tx's own (`hs_txupdate.base.fsio`, which is as
light as the shim); nothing here follows a symlink it finds inside a tree."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from hs_txupdate.base.fsio import fsync_dir, fsync_path

from .index import log_message


def resolve_uid(owner: str | int | None) -> int:
    """Return the uid for a user name or numeric id; -1 (leave as is) for None or "".

    Like chown(1), a name is looked up first and a number is taken as an id.
    Raises LookupError for a name that is neither a user nor a number.
    """
    return _resolve_id(owner, lambda name: pwd.getpwnam(name).pw_uid, "user")


def resolve_gid(group: str | int | None) -> int:
    """Return the gid for a group name or numeric id; -1 (leave as is) for None or "".

    Raises LookupError for a name that is neither a group nor a number.
    """
    return _resolve_id(group, lambda name: grp.getgrnam(name).gr_gid, "group")


def _resolve_id(value: str | int | None, by_name: Callable[[str], int], kind: str) -> int:
    if value is None or value == "":
        return -1
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return by_name(text)
    except KeyError:
        pass
    if text.isdigit():
        return int(text)
    raise LookupError(f"no such {kind}: {text!r}")


def user_name(uid: int) -> str | int:
    """Return the user name for `uid`, or the number when it has no name."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid


def group_name(gid: int) -> str | int:
    """Return the group name for `gid`, or the number when it has no name."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return gid


def is_real_dir(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a directory and not a symlink to one."""
    return os.path.isdir(path) and not os.path.islink(path)


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create `path` and any missing parents, each new one mode 0700.

    Existing directories keep their mode. Raises OSError on failure.
    """
    missing: list[Path] = []
    current = Path(os.path.abspath(path))
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made concurrently
            os.mkdir(directory, 0o700)
        # mkdir's mode is filtered by the umask; the backups must be private
        os.chmod(directory, 0o700)


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file, symlink or whole directory tree at `path`; absent is fine.

    Never follows a symlink (rmtree does not). Raises OSError on failure.
    """
    if is_real_dir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def copy_exact(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy `src` to the new path `dst`: type, content, mode, owner, times, xattrs.

    Directories are copied recursively; symlinks are copied as symlinks and
    never followed; fifos and device nodes are recreated; sockets (runtime
    artefacts) are skipped with a warning. Hard links are not preserved.
    Raises OSError on failure.
    """
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(st.st_mode):
        # private while it fills; its real mode is copied once it is complete
        os.mkdir(dst, 0o700)
        for name in sorted(os.listdir(src)):
            copy_exact(os.path.join(src, name), os.path.join(dst, name))
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        os.mknod(dst, st.st_mode, st.st_rdev)
    else:
        log_message(f"Skipping socket {src}: it cannot be copied", "WARNING")
        return
    _copy_metadata(src, dst, st)


def _copy_metadata(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], st: os.stat_result
) -> None:
    # owner first: chown clears set-id bits, which copystat then puts back
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    shutil.copystat(src, dst, follow_symlinks=False)


def tree_checksum(root: str | os.PathLike[str]) -> str:
    """Return a SHA-256 hex digest of a tree: relative paths, file bytes, link targets.

    An absent `root` gives "". Unreadable files are skipped. Raises nothing.
    """
    if not os.path.lexists(root):
        return ""
    digest = hashlib.sha256()
    for rel, full in _walk_sorted(Path(root)):
        digest.update(rel.encode() + b"\0")
        if os.path.islink(full):
            digest.update(b"L" + os.readlink(full).encode() + b"\0")
        elif os.path.isfile(full):
            _hash_file(digest, full)
    return digest.hexdigest()


def _walk_sorted(root: Path) -> list[tuple[str, Path]]:
    """Every entry under `root` (itself included) in a stable order."""
    entries = [(".", root)]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            entries.append((str(full.relative_to(root)), full))
    return entries


def _hash_file(digest: hashlib._Hash, path: Path) -> None:
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                digest.update(chunk)
    except OSError:
        pass  # a file we cannot read still counts by its name


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every regular file and directory under `root` (itself included).

    Symlinks are not followed. Raises OSError on failure.
    """
    for _rel, full in _walk_sorted(Path(root)):
        if os.path.islink(full):
            continue
        if full.is_dir():
            fsync_dir(full)
        elif full.is_file():
            fsync_path(full)


def sqlite_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy SQLite database `source` into `target` consistently (hs-tx's own copy:
    the backup API). Raises FileNotFoundError, OSError or sqlite3.Error."""
    from hs_txupdate.base.dbcopy import copy_database  # only modules that back up databases

    copy_database(source, target)


def contains(outer: str, inner: Path) -> bool:
    """True when `inner` is `outer` or lies below it."""
    outer_path = Path(outer)
    return inner == outer_path or outer_path in inner.parents


def swap_in(staging: Path, slot: Path) -> None:
    """Replace `slot` with the complete `staging` dir; the old slot is deleted after."""
    old = slot.with_name(f".{slot.name}.old")
    remove_path(old)
    if os.path.lexists(slot):
        os.rename(slot, old)
    os.rename(staging, slot)
    fsync_dir(slot.parent)
    remove_path(old)


def put_back(source: Path, path: str) -> None:
    """Replace the live `path` with an exact copy of `source`.

    The copy is made beside the target first, then renamed into place, so the
    target is never half-written; a directory is swapped out and then deleted.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.hs-tx-restore")
    old = target.with_name(f".{target.name}.hs-tx-old")
    remove_path(tmp)
    copy_exact(source, tmp)
    if os.path.lexists(target) and (is_real_dir(target) or is_real_dir(tmp)):
        remove_path(old)
        os.rename(target, old)
        os.rename(tmp, target)
        remove_path(old)
    else:
        os.replace(tmp, target)  # atomic for files and symlinks
    fsync_dir(target.parent)
