"""Trees on disk: manifests, exact comparison, and restoring only what changed.

A *manifest* records, for every entry under a scope path, its type, inode and
ctime. ctime cannot be set from user space: any write, chmod, chown, xattr
change, link or rename of an entry moves it. So an entry whose inode and
ctime still match was not touched, whatever its size and mtime say. Entries
whose ctime was within `CTIME_MARGIN_NS` of the manifest (a later change could
fall on the same clock tick) also get a full fingerprint (content and all
metadata) and are compared by that instead.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ScopeError
from ..core.fsio import fsync_dir

CTIME_MARGIN_NS = 200_000_000
# Names hs-tx itself creates beside or inside scope paths; never part of a tree.
SNAPSHOT_STORE = ".hs-tx-snapshots"
STAGE_PREFIX = ".hs-tx-stage-"
TMP_PREFIX = ".hs-tx-tmp-"
FICLONE = 0x40049409
_TYPES = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}


def entry_type(st: os.stat_result) -> str:
    """One letter for the file type of a stat result (f, d, l, c, b, p, s)."""
    return _TYPES.get(stat.S_IFMT(st.st_mode), "?")


def walk(root: Path, skip_own: bool = True) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for `root` ('' ) and everything below it.

    Never follows symlinks. Directories come before their contents. With
    `skip_own`, hs-tx's own snapshot store, staging and temp names are left out.
    """
    st = os.lstat(root)
    yield "", st
    if stat.S_ISDIR(st.st_mode):
        yield from _walk_dir(root, "", skip_own)


def _walk_dir(root: Path, rel: str, skip_own: bool) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if skip_own and is_own_name(entry.name):
            continue
        child = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        yield child, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(root, child, skip_own)


def is_own_name(name: str) -> bool:
    """True for names hs-tx creates for itself inside or beside a tree."""
    return name == SNAPSHOT_STORE or name.startswith((STAGE_PREFIX, TMP_PREFIX))


def join(root: Path, rel: str) -> Path:
    """The path of entry `rel` under `root`."""
    return root / rel if rel else root


# --- fingerprints -----------------------------------------------------------------------
def read_xattrs(path: Path) -> dict[str, bytes]:
    """All extended attributes of `path` (not following symlinks), ACLs included."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return out


def fingerprint(path: Path, st: os.stat_result | None = None) -> str:
    """A digest of one entry's content and metadata: type, mode, owner, size,
    mtime, device numbers, link count, xattrs, symlink target and bytes."""
    st = st or os.lstat(path)
    h = hashlib.sha256()
    meta = (
        entry_type(st),
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_rdev if entry_type(st) in "cb" else 0,
        st.st_nlink if entry_type(st) == "f" else 0,
    )
    h.update(repr(meta).encode())
    for name, value in sorted(read_xattrs(path).items()):
        h.update(name.encode() + b"\0" + value + b"\0")
    if stat.S_ISLNK(st.st_mode):
        h.update(os.fsencode(os.readlink(path)))
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
        finally:
            os.close(fd)
    return h.hexdigest()


# --- manifests --------------------------------------------------------------------------
@dataclass
class Manifest:
    """What a tree looked like when it was snapshotted (see module docstring)."""

    taken_ns: int
    # rel -> (type, inode, ctime_ns, fingerprint or None, link count)
    entries: dict[str, tuple[str, int, int, str | None, int]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise to JSON bytes (names kept exact through surrogate escapes)."""
        doc = {"taken_ns": self.taken_ns, "entries": [[k, *v] for k, v in self.entries.items()]}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse what `to_bytes` wrote."""
        doc = json.loads(data)
        entries = {e[0]: (e[1], e[2], e[3], e[4], e[5]) for e in doc["entries"]}
        return cls(doc["taken_ns"], entries)


def build_manifest(root: Path, taken_ns: int | None = None) -> Manifest:
    """Walk `root` and record every entry; refuse sockets (tar cannot keep them)."""
    taken = time.time_ns() if taken_ns is None else taken_ns
    manifest = Manifest(taken)
    for rel, st in walk(root):
        kind = entry_type(st)
        if kind == "s":
            raise ScopeError(
                f"{join(root, rel)} is a socket, which a snapshot cannot keep",
                "move the socket out of the path or leave the path out of backup_paths",
            )
        fp = None
        if st.st_ctime_ns >= taken - CTIME_MARGIN_NS:
            fp = fingerprint(join(root, rel), st)
        manifest.entries[rel] = (kind, st.st_ino, st.st_ctime_ns, fp, st.st_nlink)
    return manifest


def tree_fingerprint(root: Path) -> str:
    """A digest of which entries exist under `root` with which inode and ctime: it
    changes whenever anything under `root` is written, renamed, chmod-ed, ..."""
    if not os.path.lexists(root):
        return "absent"
    return _fingerprint((rel, entry_type(st), st.st_ino, st.st_ctime_ns) for rel, st in walk(root))


def manifest_fingerprint(manifest: Manifest | None) -> str:
    """What tree_fingerprint said of the tree when `manifest` was taken."""
    if manifest is None:
        return "absent"
    return _fingerprint((rel, e[0], e[1], e[2]) for rel, e in manifest.entries.items())


def _fingerprint(entries: Iterable[tuple[str, str, int, int]]) -> str:
    h = hashlib.sha256()
    for rel, kind, ino, ctime_ns in entries:
        h.update(f"{rel}\0{kind}\0{ino}\0{ctime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# --- comparing --------------------------------------------------------------------------
@dataclass
class Changes:
    """How a live tree differs from its manifest."""

    changed: list[str] = field(default_factory=list)  # in both, but touched
    extra: list[str] = field(default_factory=list)  # only live
    missing: list[str] = field(default_factory=list)  # only in the manifest

    def __bool__(self) -> bool:
        return bool(self.changed or self.extra or self.missing)

    @property
    def count(self) -> int:
        """How many entries differ."""
        return len(self.changed) + len(self.extra) + len(self.missing)


def diff(live: Path, manifest: Manifest | None) -> Changes:
    """Compare the live tree at `live` with `manifest` (None: the path was absent)."""
    changes = Changes()
    if manifest is None:
        if os.path.lexists(live):
            changes.extra.append("")
        return changes
    if not os.path.lexists(live):
        changes.missing.extend(manifest.entries)  # the whole tree is gone
        return changes
    seen = set()
    for rel, st in walk(live):
        seen.add(rel)
        recorded = manifest.entries.get(rel)
        if recorded is None:
            changes.extra.append(rel)
        elif not _unchanged(join(live, rel), st, recorded):
            changes.changed.append(rel)
    changes.missing.extend(rel for rel in manifest.entries if rel not in seen)
    return changes


def _unchanged(path: Path, st: os.stat_result, recorded: tuple) -> bool:
    kind, ino, ctime_ns, fp, _nlink = recorded
    if entry_type(st) != kind:
        return False
    if fp is not None:
        return fingerprint(path, st) == fp
    return st.st_ino == ino and st.st_ctime_ns == ctime_ns


def needed_entries(changes: Changes, manifest: Manifest) -> list[str] | None:
    """The entries a restore of `changes` reads from the reference, or None for all.

    That is every changed or missing entry with its ancestors, and the parent
    (with ancestors) of every entry the restore touches, whose times it puts
    back. None when a file to restore had hard links: its peers are needed too.
    """
    wanted = {""}
    for rel in (*changes.changed, *changes.missing):
        recorded = manifest.entries.get(rel)
        if recorded is not None and recorded[0] == "f" and recorded[4] > 1:
            return None
        wanted.update(_with_ancestors(rel))
    for rel in (*changes.changed, *changes.missing, *changes.extra):
        wanted.update(_with_ancestors(rel.rpartition("/")[0]))
    # a new directory's parents may be new as well: the snapshot has only the old ones
    kept = (rel for rel in wanted if rel in manifest.entries)
    return sorted(kept, key=lambda r: (r.count("/"), r))


def _with_ancestors(rel: str) -> list[str]:
    parts = rel.split("/") if rel else []
    return ["/".join(parts[:i]) for i in range(len(parts) + 1)]


# --- restoring --------------------------------------------------------------------------
@dataclass
class _RestoreState:
    """What one restore pass has done so far (for hard links and dir times)."""

    linked: dict[tuple[int, int], Path] = field(default_factory=dict)
    dirs_to_fix: set[str] = field(default_factory=set)
    touched_dirs: set[Path] = field(default_factory=set)
    counter: int = 0


Announce = Callable[[str, list[str]], None]


def restore(
    live: Path,
    reference: Path | None,
    changes: Changes,
    announce: Announce | None = None,
    batch_size: int = 256,
) -> None:
    """Make `live` exactly like `reference` (None: make it absent), touching only `changes`.

    Each file is built under a temp name beside its final one and renamed into
    place, so every entry is either old or new. Work is done in batches;
    `announce("intent", entries)` is called before a batch acts (so a caller can
    journal it) and `announce("done", entries)` once it is durable. Running
    restore again after an interruption finishes the job, since a new diff
    finds what is left.
    """
    if reference is None or not os.path.lexists(reference):
        if os.path.lexists(live):
            _announce(announce, "intent", [""])
            remove_entry(live)
            fsync_dir(live.parent)
            _announce(announce, "done", [""])
        return
    state = _RestoreState()
    work = _plan(live, reference, changes)
    for start in range(0, len(work), batch_size):
        chunk = work[start : start + batch_size]
        rels = [rel for _, rel in chunk]
        _announce(announce, "intent", rels)
        for action, rel in chunk:
            _apply(action, rel, live, reference, state)
        _flush(state)
        _announce(announce, "done", rels)
    fix = sorted(state.dirs_to_fix, key=lambda r: (-r.count("/"), r))
    for start in range(0, len(fix), batch_size):
        chunk = fix[start : start + batch_size]
        rels = [f"{rel}/" for rel in chunk]
        _announce(announce, "intent", rels)
        for rel in chunk:
            target = join(live, rel)
            if os.path.isdir(target) and not os.path.islink(target):
                apply_metadata(join(reference, rel), target)
                state.touched_dirs.add(target)
        _flush(state)
        _announce(announce, "done", rels)


def _announce(announce: Announce | None, status: str, rels: list[str]) -> None:
    if announce is not None:
        announce(status, rels)


def _plan(live: Path, reference: Path, changes: Changes) -> list[tuple[str, str]]:
    """Order the work: removals first (deepest first), then creations top-down."""
    ref_types = {rel: _lexists_type(join(reference, rel)) for rel in changes.changed}
    removals = set(changes.extra)
    for rel in changes.changed:
        live_type = _lexists_type(join(live, rel))
        if live_type != ref_types[rel]:
            removals.add(rel)
    # an entry below a removed directory goes with it
    pruned = [r for r in removals if not any(a in removals for a in _with_ancestors(r)[:-1])]
    work = [("remove", r) for r in sorted(pruned, key=lambda r: (-r.count("/"), r))]
    create = sorted(set(changes.changed) | set(changes.missing), key=lambda r: (r.count("/"), r))
    work.extend(("put", r) for r in create)
    return work


def _lexists_type(path: Path) -> str | None:
    try:
        return entry_type(os.lstat(path))
    except FileNotFoundError:
        return None


def _apply(action: str, rel: str, live: Path, reference: Path, state: _RestoreState) -> None:
    target = join(live, rel)
    if action == "remove":
        if os.path.lexists(target):
            remove_entry(target)
        _parent_touched(rel, target, state)
        return
    source = join(reference, rel)
    st = os.lstat(source)
    if stat.S_ISDIR(st.st_mode):
        if not (os.path.isdir(target) and not os.path.islink(target)):
            if os.path.lexists(target):
                remove_entry(target)
            os.mkdir(target, 0o700)
            _parent_touched(rel, target, state)
        state.dirs_to_fix.add(rel)
        return
    tmp = target.with_name(f"{TMP_PREFIX}{os.getpid()}-{state.counter}")
    state.counter += 1
    key = (st.st_dev, st.st_ino)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in state.linked:
        os.link(state.linked[key], tmp)
    else:
        materialize(source, tmp, st)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            state.linked[key] = target
    if os.path.isdir(target) and not os.path.islink(target):
        remove_entry(target)
    os.rename(tmp, target)
    _parent_touched(rel, target, state)


def _parent_touched(rel: str, target: Path, state: _RestoreState) -> None:
    """Remember that the directory holding `rel` needs its times (and fsync) put back."""
    state.touched_dirs.add(target.parent)
    if rel:
        state.dirs_to_fix.add(rel.rpartition("/")[0])


def _flush(state: _RestoreState) -> None:
    for directory in state.touched_dirs:
        if os.path.isdir(directory):
            fsync_dir(directory)
    state.touched_dirs.clear()


def remove_entry(path: Path) -> None:
    """Remove a file, symlink or whole directory tree without following symlinks."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    with os.scandir(path) as it:
        children = list(it)
    for child in children:
        remove_entry(Path(child.path))
    os.rmdir(path)


def materialize(source: Path, dest: Path, st: os.stat_result | None = None) -> None:
    """Create `dest` as an exact copy of the non-directory entry `source`.

    Regular files are reflinked where the filesystem can, else copied keeping
    holes; then owner, mode, xattrs (ACLs, capabilities) and times are set and
    the file is fsynced.
    """
    st = st or os.lstat(source)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        _copy_file(source, dest)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), dest)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dest, 0o600)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(dest, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    else:
        raise ScopeError(f"cannot restore {source}: unsupported file type", "")
    apply_metadata(source, dest, st)
    if stat.S_ISREG(mode):
        fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_file(source: Path, dest: Path) -> None:
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.ioctl(dst, FICLONE, src)
            except OSError:
                _sparse_copy(src, dst)
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


def apply_metadata(source: Path, dest: Path, st: os.stat_result | None = None) -> None:
    """Give `dest` the owner, mode, xattrs and times of `source` (no symlink following).

    Order matters: chown clears set-id bits and file capabilities, so mode and
    xattrs come after it, and times come last.
    """
    st = st or os.lstat(source)
    os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dest, stat.S_IMODE(st.st_mode))
    wanted = read_xattrs(source)
    present = read_xattrs(dest)
    for name in present.keys() - wanted.keys():
        os.removexattr(dest, name, follow_symlinks=False)
    for name, value in wanted.items():
        if present.get(name) != value:
            os.setxattr(dest, name, value, follow_symlinks=False)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
