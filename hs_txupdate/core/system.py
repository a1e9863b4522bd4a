"""Whole-system scope on btrfs (`[scope] system`): one read-only snapshot of every
subvolume under the watched roots, and a rollback or undo that puts back exactly what
the run changed there.

With it on, the scope holds every watched root and every subvolume below one (btrfs
mounts and nested subvolumes, each on its own), origin `system`, except hs-tx's
snapshot stores, the state dir, the ignored paths and read-only mounts. Paths on other
filesystems (`/boot`, a tmpfs) stay covered as before: declared, learned, or reported
outside the scope. What a run changed inside the system scope is journaled as its run
changes: the write audit's attribution (writes by other processes are never among
them), or, when that was incomplete, what btrfs lists as changed, minus the ignores
and the state dir. The rollback and the undo restore only those entries.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from ..audit import Change, why_unwatchable
from ..audit.fold import name_key
from ..audit.paths import Mount, fstype_at, keep, read_mounts, under
from ..base.errors import ScopeError
from ..journal import ChangeInfo, Journal, Kind, Origin, PathInfo, RunChangeInfo, TxInfo
from ..snapshot.btrfs import subvolume_root
from ..snapshot.manifest import Changes
from ..snapshot.subvol import SUBVOLUME_ROOT_INO, child_subvolumes, subvolume_identity
from .config import Config
from .scope import Planned
from .services import UNIT_DIRS, unit_files
from .snapshots import path_changes

Keep = Callable[[str], bool]


def system_scope(config: Config) -> tuple[bool, str | None]:
    """Given the config, return (whether this run takes the whole-system scope, a note
    for the operator when it is off although asked for or possible).

    Raises ScopeError when `[scope] system = "on"` but a watched root is not on btrfs
    or the snapshot backend is tar.
    """
    if config.system == "off":
        return False, None
    not_btrfs = [str(r) for r in config.watch if fstype_at(str(r)) != "btrfs"]
    if not_btrfs or config.snapshot_backend == "tar":
        if config.system == "auto":
            return False, None
        what = f"{not_btrfs[0]} is not on btrfs" if not_btrfs else "snapshot.backend is tar"
        raise ScopeError(
            f'[scope] system = "on" needs btrfs snapshots of every watched root: {what}',
            'set [scope] system = "auto" or "off", or watch only btrfs roots',
        )
    unwatchable = why_unwatchable(list(config.watch), list(config.ignores))
    if unwatchable is not None:
        return False, (
            f"system scope is off for this run: the write audit cannot run ({unwatchable}); "
            "only the planned paths are snapshotted"
        )
    return True, None


def system_paths(config: Config) -> list[Path]:
    """Every watched root, btrfs mount of a subvolume and nested subvolume below one,
    each subvolume top once (a second mount of one is left out), except what
    `_excluded` names; sorted. Reads the mount table and asks btrfs (no walk).

    Raises ScopeError when btrfs will not list the subvolumes nested in one.
    """
    mounts = read_mounts()
    # a subvolume's top by its device (each subvolume has its own), a root by its path;
    # a state dir that is a subvolume of its own is left out by device too, since
    # another mount of the filesystem shows it under another path
    found: dict[object, Path] = {}
    state = os.lstat(config.state_dir) if os.path.isdir(config.state_dir) else None
    own = state.st_dev if state and state.st_ino == SUBVOLUME_ROOT_INO else None
    roots = sorted((os.path.realpath(r) for r in config.watch), key=len)
    for root in roots:
        below = [m.point for m in mounts if m.fstype == "btrfs" and m.point != root]
        tops = [root, *sorted((p for p in below if under(p, root)), key=len)]
        for top in tops:
            is_root = top == root
            if _excluded(config, top, mounts) or not (is_root or _subvolume_top(top)):
                continue  # a mount of a plain directory: what it shows stays outside
            for path in [Path(top), *_nested(config, Path(top), mounts)]:
                st = os.lstat(path)
                key = st.st_dev if st.st_ino == SUBVOLUME_ROOT_INO else path
                if key != own:
                    found.setdefault(key, path)
    return sorted(found.values())


def _subvolume_top(path: str) -> bool:
    try:
        return os.lstat(path).st_ino == SUBVOLUME_ROOT_INO
    except OSError:
        return False


def _nested(config: Config, top: Path, mounts: Sequence[Mount]) -> list[Path]:
    """The subvolumes nested (at any depth) below `top`, still visible there and
    writable (a read-only one, such as another tool's snapshot, is left out with
    everything below it). Raises ScopeError when btrfs will not list them."""
    subvolume = subvolume_root(top)
    inside = os.path.relpath(top, subvolume)
    try:
        children = child_subvolumes(subvolume)
    except OSError as exc:
        raise ScopeError(
            f"btrfs did not list the subvolumes nested in {subvolume}: {exc}",
            'set [scope] system = "off" to snapshot only the planned paths',
        ) from exc
    nested = []
    for child in children:
        if inside != "." and not child.startswith(inside + "/"):
            continue
        path = subvolume / child
        # a mount over it hides it; it was met as that mount's own subvolume, or not at all
        if not _subvolume_top(str(path)) or _excluded(config, str(path), mounts):
            continue
        identity = subvolume_identity(path)
        if identity is None or identity.readonly:
            continue
        if _holder(str(path), mounts) != _holder(str(top), mounts):
            continue
        nested.append(path)
        nested += _nested(config, path, mounts)
    return nested


def _excluded(config: Config, path: str, mounts: Sequence[Mount]) -> bool:
    """True for what the system scope leaves out: what the write audit never watches
    (the ignored paths, the state dir, the snapshot stores and what lies in them), kernel
    or non-btrfs filesystems, read-only mounts."""
    if not keep(path, _roots(config), _ignores(config)):
        return True
    if fstype_at(path, mounts) != "btrfs":
        return True
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _roots(config: Config) -> list[str]:
    return [os.path.realpath(r) for r in config.watch]


def _ignores(config: Config) -> list[str]:
    return [os.path.realpath(i) for i in config.ignores]


def _holder(path: str, mounts: Sequence[Mount]) -> str:
    """The mount point of the mount holding `path`."""
    return max((m.point for m in mounts if under(path, m.point)), key=len, default="/")


def with_system(config: Config, system: list[Path], planned: list[Planned]) -> list[Planned]:
    """The system entries (origin system, never folded together), then each planned path
    no system entry holds (on another filesystem), and those hs-tx itself writes (the
    module dirs in phase 1, its own install dir in phase 3, the module runtime): hs-tx's
    own writes are not the modules', and the audit does not attribute them."""
    mounts = read_mounts()
    entries = [Planned(p, Origin.SYSTEM) for p in system]
    own = (Origin.MODULE, Origin.SELF, Origin.RUNTIME)
    return entries + [
        p for p in planned if p.origin in own or holding(p.path, system, mounts) is None
    ]


def system_units(system: list[Path]) -> list[str]:
    """The systemd units whose files lie in a unit dir the system entries hold: their
    states are journaled before the run, like those of unit files in scope."""
    mounts = read_mounts()
    return unit_files([d for d in UNIT_DIRS if d.is_dir() and holding(d, system, mounts)])


def holding(path: Path | str, system: Iterable[Path | str], mounts: Sequence[Mount]) -> str | None:
    """The system entry whose snapshot holds `path` (the deepest one above it, with no
    mount point and no subvolume of its own between), or None."""
    text = os.path.normpath(str(path))
    above = [str(s) for s in system if under(text, str(s))]
    if not above:
        return None
    top = max(above, key=len)
    if any(m.point != top and under(m.point, top) and under(text, m.point) for m in mounts):
        return None
    return top if _device(text) == _device(top) else None


def _device(path: str) -> int:
    """The device of `path`, or of its nearest existing parent."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return os.lstat(path).st_dev


def system_of(paths: Iterable[PathInfo]) -> list[str]:
    """The system entries among a transaction's scope paths."""
    return [p.path for p in paths if p.origin == Origin.SYSTEM]


def attributed(tx: TxInfo) -> bool:
    """True when the run changes of `tx` name all it changed inside its system scope: the
    write audit watched it with fanotify, it never started (no module ran), or (undo)
    they were written before it acted."""
    return tx.audit_method in ("fanotify", None) or tx.kind == Kind.UNDO


# what a run change marks: True, its whole subtree; False, the entry alone; a set of name
# keys, the entry and, whole, those of its entries (a directory with many changed ones)
Mark = bool | frozenset[int]


def run_change(change: Change) -> RunChangeInfo:
    """The journal's record of the write audit's `change` inside a system scope."""
    names = " ".join(map(str, change.names)) if change.names else None
    return RunChangeInfo(change.path, change.change, change.module, change.count, names)


def changes_in(tx: TxInfo, info: PathInfo) -> dict[str, Mark]:
    """The run changes of `tx` held by its system entry `info`, relative to it, each
    with what it marks (see Mark): created or deleted, its whole subtree; a directory
    many of whose entries changed, those; else the entry alone (a file, or a
    directory's own times or mode)."""
    tops = system_of(tx.paths)
    mounts = read_mounts()
    marks: dict[str, Mark] = {}
    for change in tx.run_changes:
        if holding(change.path, tops, mounts) == info.path:
            rel = "" if change.path == info.path else os.path.relpath(change.path, info.path)
            marks[rel] = _joined(marks.get(rel, False), _mark_of(change))
    return marks


def _mark_of(change: RunChangeInfo) -> Mark:
    if change.change in ("created", "deleted"):
        return True
    if change.names:
        return frozenset(int(key) for key in change.names.split())
    return change.count > 1  # folded before names were kept: the whole directory


def _joined(a: Mark, b: Mark) -> Mark:
    if a is True or b is True:
        return True
    if isinstance(a, frozenset) and isinstance(b, frozenset):
        return a | b
    return a if isinstance(a, frozenset) else b


def _marked(rel: str, marks: dict[str, Mark]) -> bool:
    """True when `rel` is a marked entry, lies below one marked whole, or lies at or
    below a named entry of a directory with many changed ones."""
    for m, mark in marks.items():
        if rel == m:
            return True
        if mark is False or not _at_or_below(rel, m):
            continue
        if mark is True:
            return True
        child = (rel if m == "" else rel[len(m) + 1 :]).split("/", 1)[0]
        if isinstance(mark, frozenset) and name_key(child) in mark:
            return True
    return False


def restored_paths(tx: TxInfo, info: PathInfo) -> list[Path]:
    """The paths a restore of scope path `info` of `tx` put back, for the services: its
    run changes for a system entry, else the path itself."""
    if info.origin != Origin.SYSTEM:
        return [Path(info.path)]
    return [Path(info.path) / rel if rel else Path(info.path) for rel in changes_in(tx, info)]


def restore_filter(config: Config, tx: TxInfo, info: PathInfo, listed: bool) -> Keep:
    """Which entries (relative to the system entry `info` of `tx`) a restore puts back:
    never what the write audit never watches (the ignored paths, the state dir, hs-tx's
    own names) nor what lies below a mount point; `listed`: only the run changes of `tx`,
    what lies below those marked whole, and the other links of a marked file (a write
    through one link changes them all; the audit names the one written)."""
    wanted = changes_in(tx, info) if listed else None
    top = info.path
    roots, ignores = _roots(config), _ignores(config)
    points = [m.point for m in read_mounts() if m.point != top and under(m.point, top)]
    trees = (Path(top), _snapshot_tree(info))
    linked = _linked_inodes(trees, wanted) if wanted else set()

    def accept(rel: str) -> bool:
        path = os.path.join(top, rel) if rel else top
        if not keep(path, roots, ignores) or any(under(path, p) for p in points):
            return False
        if wanted is None or _marked(rel, wanted):
            return True
        return bool(linked) and not linked.isdisjoint(_file_inodes(trees, rel))

    return accept


def _snapshot_tree(info: PathInfo) -> Path:
    """Where the btrfs snapshot recorded for scope path `info` holds it (inode numbers
    as live: a snapshot keeps them)."""
    ref = json.loads(info.snapshot or "{}")
    snapshot = Path(ref.get("snapshot", "/nonexistent"))
    return snapshot if ref.get("rel", ".") == "." else snapshot / ref["rel"]


def _file_inodes(trees: Iterable[Path], rel: str) -> set[int]:
    """The inode numbers of the non-directory `rel` with several links, live or in the
    snapshot."""
    found = set()
    for tree in trees:
        try:
            st = os.lstat(tree / rel if rel else tree)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            found.add(st.st_ino)
    return found


def _linked_inodes(trees: tuple[Path, Path], marks: dict[str, Mark]) -> set[int]:
    return {ino for rel in marks for ino in _file_inodes(trees, rel)}


def _at_or_below(rel: str, top: str) -> bool:
    return top == "" or rel == top or rel.startswith(top + "/")


def listed_changes(changes: Changes, keep: Keep) -> list[ChangeInfo]:
    """What btrfs lists as changed, kept by `keep`, as run changes (relative paths): an
    entry below a created or deleted one is left to it."""
    whole = sorted({*changes.extra, *changes.missing})
    out = []
    for kind, rels in (("modified", changes.changed), ("created", changes.extra)):
        out += [ChangeInfo(r, kind, None, 1) for r in rels if keep(r)]
    out += [ChangeInfo(r, "deleted", None, 1) for r in changes.missing if keep(r)]
    return [c for c in out if not any(c.path != w and _at_or_below(c.path, w) for w in whole)]


def settle_changes(config: Config, journal: Journal, tx: TxInfo, info: PathInfo) -> dict[str, Mark]:
    """Given a transaction about to commit and one of its system entries, return the
    entries (relative to it) the transaction changed there: its run changes, and, when
    the write audit could not attribute every write, what btrfs lists as changed
    (journaled as run changes, so an undo puts back the same). Raises CommandError,
    DamagedError, OSError."""
    if attributed(tx):
        return changes_in(tx, info)
    keep = restore_filter(config, tx, info, listed=False)
    listed = listed_changes(path_changes(journal, info), keep)
    top = Path(info.path)
    rows = [
        RunChangeInfo(str(top / c.path if c.path else top), c.change, None, c.count) for c in listed
    ]
    journal.add_run_changes(tx.id, rows)
    return changes_in(replace(tx, run_changes=[*tx.run_changes, *rows]), info)
