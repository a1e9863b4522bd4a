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

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..audit.kernel import fanotify_group
from ..audit.paths import Mount, fstype_at, keep, read_mounts, under
from ..base.errors import ScopeError
from ..journal import ChangeInfo, Journal, Kind, Origin, PathInfo, TxInfo
from ..snapshot.btrfs import subvolume_root
from ..snapshot.manifest import Changes, tree_fingerprint
from ..snapshot.subvol import SUBVOLUME_ROOT_INO, child_subvolumes
from .config import Config
from .scope import Planned
from .services import UNIT_DIRS, unit_files
from .snapshots import path_changes

Keep = Callable[[str], bool]
RELS = "rels:"  # a system entry's fingerprint: of the entries its run changed


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
        why = f"{not_btrfs[0]} is not on btrfs" if not_btrfs else "snapshot.backend is tar"
        raise ScopeError(
            f'[scope] system = "on" needs btrfs snapshots of every watched root: {why}',
            'set [scope] system = "auto" or "off", or watch only btrfs roots',
        )
    try:
        os.close(fanotify_group())
    except OSError as exc:
        return False, (
            f"system scope is off for this run: the write audit cannot run ({exc}); "
            "only the planned paths are snapshotted"
        )
    return True, None


def system_paths(config: Config) -> list[Path]:
    """Every watched root, btrfs mount and nested subvolume below one, except what
    `_excluded` names; sorted. Reads the mount table and asks btrfs (no walk)."""
    mounts = read_mounts()
    found: set[Path] = set()
    for root in config.watch:
        real = os.path.realpath(root)
        tops = [real] + [
            m.point
            for m in mounts
            if m.fstype == "btrfs" and m.point != real and under(m.point, real)
        ]
        for top in tops:
            if not _excluded(config, top, mounts):
                found.add(Path(top))
                found.update(_nested(config, Path(top), mounts))
    return sorted(found)


def _nested(config: Config, top: Path, mounts: Sequence[Mount]) -> list[Path]:
    """The subvolumes nested (at any depth) below `top`, still visible there."""
    subvolume = subvolume_root(top)
    inside = os.path.relpath(top, subvolume)
    nested = []
    for child in child_subvolumes(subvolume):
        if inside != "." and not child.startswith(inside + "/"):
            continue
        path = subvolume / child
        try:
            st = os.lstat(path)
        except OSError:
            continue
        # a mount over it hides it; it was met as that mount's own subvolume, or not at all
        if st.st_ino != SUBVOLUME_ROOT_INO or _excluded(config, str(path), mounts):
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
    if not keep(path, _roots(config), [str(i) for i in config.ignores]):
        return True
    if fstype_at(path, mounts) != "btrfs":
        return True
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _roots(config: Config) -> list[str]:
    return [os.path.realpath(r) for r in config.watch]


def _holder(path: str, mounts: Sequence[Mount]) -> str:
    """The mount point of the mount holding `path`."""
    return max((m.point for m in mounts if under(path, m.point)), key=len, default="/")


def with_system(config: Config, system: list[Path], planned: list[Planned]) -> list[Planned]:
    """The system entries (origin system, never folded together), then each planned path
    no system entry holds (on another filesystem, or not yet existing there)."""
    mounts = read_mounts()
    entries = [Planned(p, Origin.SYSTEM) for p in system]
    return entries + [p for p in planned if holding(p.path, system, mounts) is None]


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
    probe = text
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    return top if os.lstat(probe).st_dev == os.stat(top).st_dev else None


def system_of(paths: Iterable[PathInfo]) -> list[str]:
    """The system entries among a transaction's scope paths."""
    return [p.path for p in paths if p.origin == Origin.SYSTEM]


def attributed(tx: TxInfo) -> bool:
    """True when the run changes of `tx` name all it changed inside its system scope: the
    write audit watched it with fanotify, or (undo) they were written before it acted."""
    return tx.audit_method == "fanotify" or tx.kind == Kind.UNDO


def changes_in(tx: TxInfo, info: PathInfo) -> list[str]:
    """The run changes of `tx` held by its system entry `info`, relative to it."""
    tops = system_of(tx.paths)
    mounts = read_mounts()
    rels = []
    for change in tx.run_changes:
        if holding(change.path, tops, mounts) == info.path:
            rels.append("" if change.path == info.path else os.path.relpath(change.path, info.path))
    return sorted(set(rels))


def restored_paths(tx: TxInfo, info: PathInfo) -> list[Path]:
    """The paths a restore of scope path `info` of `tx` put back, for the services: its
    run changes for a system entry, else the path itself."""
    if info.origin != Origin.SYSTEM:
        return [Path(info.path)]
    return [Path(info.path) / rel if rel else Path(info.path) for rel in changes_in(tx, info)]


def restore_filter(config: Config, tx: TxInfo, info: PathInfo, listed: bool) -> Keep:
    """Which entries (relative to the system entry `info` of `tx`) a restore puts back:
    never what the write audit never watches (the ignored paths, the state dir, hs-tx's
    own names) nor what lies below a mount point; `listed`: only the run changes of `tx`
    and what lies below them."""
    wanted = changes_in(tx, info) if listed else None
    top = info.path
    roots, ignores = _roots(config), [str(i) for i in config.ignores]
    points = [m.point for m in read_mounts() if m.point != top and under(m.point, top)]

    def accept(rel: str) -> bool:
        path = os.path.join(top, rel) if rel else top
        if not keep(path, roots, ignores) or any(under(path, p) for p in points):
            return False
        return wanted is None or any(_at_or_below(rel, w) for w in wanted)

    return accept


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


def settle_changes(config: Config, journal: Journal, tx: TxInfo, info: PathInfo) -> list[str]:
    """Given a transaction about to commit and one of its system entries, return the
    entries (relative to it) the transaction changed there: its run changes, and, when
    the write audit could not attribute every write, what btrfs lists as changed
    (journaled as run changes, so an undo puts back the same). Raises CommandError,
    DamagedError, OSError."""
    rels = changes_in(tx, info)
    if attributed(tx):
        return rels
    keep = restore_filter(config, tx, info, listed=False)
    listed = listed_changes(path_changes(journal, info), keep)
    top = Path(info.path)
    rows = [(str(top / c.path if c.path else top), c.change, None, c.count) for c in listed]
    journal.add_run_changes(tx.id, rows)
    return sorted({*rels, *(c.path for c in listed)})


def fingerprint_of(top: Path, rels: list[str]) -> str:
    """A digest of the entries below `rels` of `top` as they are now: it walks only
    those, and changes when anything below them is written, renamed, chmod-ed, ..."""
    digest = hashlib.sha256()
    for rel in sorted(rels):
        digest.update(f"{rel}\0{tree_fingerprint(top / rel if rel else top)}\n".encode())
    return RELS + digest.hexdigest()
