"""Planning a transaction's scope: which paths it snapshots, and whether it may.

Scope = the modules dir + backup_paths of enabled modules + each module's
`[scope.modules.NAME] paths` and learned footprint + scope.extra_paths, with
nested paths folded into their parents; each path keeps where it came from
(journal.Origin). StateManager backups add paths while the run runs (see
core.statemanager). A path is refused when it is `/`, when it holds
a mount point or a nested subvolume (a snapshot would miss what is below it),
when it holds the state dir or lies inside it, or (tar) when it holds a socket;
the entries of a whole-system scope (core.system) are exempt: each stands for its
own subvolume, and their restores leave those places alone.
On btrfs these checks ask the mount table and btrfs, never walking the path. Links
are resolved when planned: a scope path that is a link stands for its target
(inside a watched root), so restores never have to write through a link.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..audit.paths import KERNEL_FSTYPES, fstype_at, is_watched, read_mounts, under
from ..base.errors import NoSpaceError, ScopeError
from ..journal import Origin
from ..modules.discovery import Module
from ..snapshot import backend_by_name, choose_backend
from ..snapshot.btrfs import subvolume_root
from ..snapshot.entries import entry_type, join, walk
from ..snapshot.subvol import child_subvolumes
from .config import Config

# Room kept free beyond the snapshots, for the journal and the system to go on.
SPACE_MARGIN = 16 << 20
# What a tar archive adds per entry: its header block and a pax header (times, xattrs).
TAR_ENTRY_OVERHEAD = 1536


@dataclass(frozen=True)
class Planned:
    """A path planned into a scope: why (origin) and for which module (if any)."""

    path: Path
    origin: Origin
    module: str | None = None


@dataclass(frozen=True)
class ScopeEntry:
    """One path of the scope, checked, with the backend that will snapshot it."""

    path: Path
    existed: bool
    backend: str
    size: int
    origin: Origin | None = None
    module: str | None = None
    linked_from: Path | None = None  # the planned path was a link to this one


def fold(paths: Iterable[Path]) -> list[Path]:
    """Normalise `paths`, drop duplicates and every path inside another one; sorted."""
    normal = sorted({Path(os.path.normpath(p)) for p in paths})
    folded: list[Path] = []
    for path in normal:
        if not any(path.is_relative_to(parent) for parent in folded):
            folded.append(path)
    return folded


def fold_planned(planned: Iterable[Planned]) -> list[Planned]:
    """Like fold(): normalised, sorted, nothing inside another path; a path planned
    twice (or inside another) keeps the origin of the first one planned."""
    first: dict[Path, Planned] = {}
    for item in planned:
        first.setdefault(Path(os.path.normpath(item.path)), item)
    return [Planned(path, first[path].origin, first[path].module) for path in fold(first.keys())]


def plan_paths(
    config: Config,
    installed: Iterable[Module],
    future: Iterable[Module],
    own: Iterable[Planned] = (),
    learned: Iterable[tuple[str, str]] = (),
) -> list[Planned]:
    """The folded scope of a run: the modules dir (holding the modules as they will
    be), `own`
    (hs-tx's install dir when phase 3 replaces it, the module runtime it rebuilds), the
    backup paths of every enabled module as installed and as it will be, the paths
    the config and the `learned` (module, path) footprints add for the enabled
    modules, and extra_paths."""
    future = list(future)
    enabled = {m.name for m in future if m.enabled}
    # the module dirs as one path: one snapshot, not one per module
    planned = [Planned(config.modules_dir, Origin.MODULE)] if future else []
    planned += own
    for module in (m for m in [*installed, *future] if m.enabled):
        planned += [Planned(p, Origin.INDEX, module.name) for p in module.backup_paths]
    for name, paths in sorted(config.module_paths.items()):
        if name in enabled:
            planned += [Planned(p, Origin.CONFIG, name) for p in paths]
    planned += [Planned(Path(p), Origin.LEARNED, m) for m, p in learned if m in enabled]
    planned += [Planned(p, Origin.EXTRA) for p in config.extra_paths]
    return fold_planned(planned)


def check_scope(
    config: Config, planned: list[Planned], log: Callable[[str], None] | None = None
) -> list[ScopeEntry]:
    """Check every planned path and pick its backend; return the entries.

    A learned path that may no longer be snapshotted is left out (said through
    `log`): the write audit reports it again if the run changes it. Raises
    ScopeError (exit 2) for any other path that may not be snapshotted, and
    NoSpaceError when the filesystems lack room for the snapshots.
    """
    entries = []
    for item in planned:
        try:
            entries.append(check_path(config, item))
        except ScopeError as exc:
            if item.origin != Origin.LEARNED:
                raise
            if log is not None:
                log(f"hs-tx: note: learned path {item.path} of {item.module} left out: {exc}")
    entries = _fold_entries(entries)
    for entry in entries:
        if entry.linked_from is not None and log is not None:
            log(f"hs-tx: note: scope path {entry.linked_from} is a link; snapshotting {entry.path}")
    check_free_space(config, entries)
    return entries


def _fold_entries(entries: list[ScopeEntry]) -> list[ScopeEntry]:
    """Drop an entry that resolving links put at or inside another one; the entries of
    a whole-system scope stay apart (each stands for its own subvolume)."""
    system = [entry for entry in entries if entry.origin == Origin.SYSTEM]
    kept = {entry.path: entry for entry in entries if entry.origin != Origin.SYSTEM}
    outer = set(fold(kept))
    return system + [entry for path, entry in kept.items() if path in outer]


def resolve(config: Config, path: Path) -> tuple[Path, Path | None]:
    """The path a scope path stands for, links resolved (the path itself and the
    directories above it, as they are now, so a link planted there later is seen at
    restore): (real path, the planned path when a link led elsewhere, else None).

    Raises ScopeError when a link leads to a path outside every `[scope] watch` root,
    in an ignored path or in the state dir.
    """
    target = Path(os.path.realpath(path))
    if target == path:
        return path, None
    roots = [str(root) for root in config.watch]
    if is_watched(str(target), roots, [str(i) for i in config.ignores]):
        return target, path
    inside = any(target.is_relative_to(root) for root in config.watch)
    where = "in a path the write audit ignores" if inside else "outside [scope] watch"
    raise ScopeError(
        f"scope path {path} leads through a symbolic link to {target}, {where}",
        "name the real path in backup_paths, or replace the link with the directory",
    )


def check_path(config: Config, item: Planned) -> ScopeEntry:
    """Check one path: it may be snapshotted (see the module docstring); return its
    entry, links resolved (see resolve), with the backend that will snapshot it.
    Raises ScopeError otherwise."""
    if item.origin == Origin.SYSTEM:  # planned by core.system: a btrfs subvolume or root
        return ScopeEntry(item.path, True, "btrfs", 0, item.origin)
    path, linked_from = resolve(config, item.path)
    if path == Path("/"):
        raise ScopeError("scope path / is the whole system", "name the paths inside it instead")
    state = Path(os.path.realpath(config.state_dir))
    real = Path(os.path.realpath(path))
    if state.is_relative_to(real) or real.is_relative_to(state):
        raise ScopeError(
            f"scope path {path} would hold or lie in the state dir {config.state_dir}",
            "move state_dir elsewhere or take the path out of backup_paths/extra_paths",
        )
    fstype = fstype_at(str(path))
    if fstype in KERNEL_FSTYPES:
        raise ScopeError(
            f"scope path {path} lies on a {fstype} filesystem, the kernel's own view:"
            " there are no files there to snapshot or restore",
            "take it out of backup_paths / the scope",
        )
    existed = os.path.lexists(path)
    backend = choose_backend(config.snapshot_backend, path, config.snapshots_dir)
    size = 0
    if existed and backend == "btrfs":
        _check_subvolume_tree(path)
    elif existed:
        size = _check_tree(path)
    return ScopeEntry(path, existed, backend, size, item.origin, item.module, linked_from)


def _check_tree(root: Path) -> int:
    """Refuse mount points, nested subvolumes and sockets below `root`; return its size."""
    size = 0
    root_dev = None
    for rel, st in walk(root):
        if root_dev is None:
            root_dev = st.st_dev
        elif st.st_dev != root_dev:
            raise ScopeError(
                f"scope path {root} contains {join(root, rel)}, a mount point or nested subvolume",
                "a snapshot would miss what is below it; list the paths inside it separately",
            )
        if entry_type(st) == "s":
            raise ScopeError(
                f"scope path {root} contains the socket {join(root, rel)},"
                " which no snapshot can keep",
                "move the socket elsewhere or take the path out of the scope",
            )
        size += st.st_blocks * 512 + TAR_ENTRY_OVERHEAD
    return size


def _check_subvolume_tree(root: Path) -> None:
    """Refuse a mount point or nested subvolume below the btrfs path `root`, asking the
    mount table and btrfs (no walk: a snapshot needs no size, and keeps sockets)."""
    real = os.path.realpath(root)
    below = [m.point for m in read_mounts() if m.point != real and under(m.point, real)]
    if os.path.isdir(root) and not os.path.islink(root):
        top = subvolume_root(root)
        inside = os.path.relpath(real, os.path.realpath(top))
        for child in child_subvolumes(top):
            if inside == "." or child.startswith(inside + "/"):
                below.append(str(top / child))
    if below:
        raise ScopeError(
            f"scope path {root} contains {sorted(below)[0]}, a mount point or nested subvolume",
            "a snapshot would miss what is below it; list the paths inside it separately",
        )


def check_free_space(config: Config, entries: list[ScopeEntry]) -> None:
    """Refuse (NoSpaceError) when a filesystem lacks room for the planned snapshots."""
    need: dict[int, tuple[Path, int]] = {}  # by filesystem: a dir on it, bytes needed
    for entry in entries:
        if not entry.existed:
            continue
        backend = backend_by_name(entry.backend, config.snapshots_dir)
        for directory, amount in backend.required_space(entry.path, entry.size):
            probe = _existing(directory)
            dev = os.stat(probe).st_dev
            known, total = need.get(dev, (probe, 0))
            need[dev] = (known, total + amount)
    for probe, amount in need.values():
        vfs = os.statvfs(probe)
        free = vfs.f_bavail * vfs.f_frsize
        if amount + SPACE_MARGIN > free:
            raise NoSpaceError(
                f"not enough free space on the filesystem of {probe}: "
                f"{_mib(amount + SPACE_MARGIN)} needed for snapshots, {_mib(free)} free",
                "free some space or take large paths out of the scope; nothing was changed",
            )


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
