"""Planning a transaction's scope: which paths it snapshots, and whether it may.

Scope = every module dir + backup_paths of enabled modules + scope.extra_paths,
with nested paths folded into their parents. A path is refused when it holds
a mount point or a nested subvolume (a snapshot would miss what is below it),
when it holds the state dir or lies inside it, or when it holds a socket.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import NoSpaceError, ScopeError
from ..modules.discovery import Module
from ..snapshot import backend_by_name, choose_backend
from ..snapshot.entries import entry_type, join, walk
from .config import Config

# Beyond the estimated size: tar headers, and room for the system to keep working.
SPACE_MARGIN = 16 << 20


@dataclass(frozen=True)
class ScopeEntry:
    """One path of the scope, checked, with the backend that will snapshot it."""

    path: Path
    existed: bool
    backend: str
    size: int


def fold(paths: Iterable[Path]) -> list[Path]:
    """Normalise `paths`, drop duplicates and every path inside another one; sorted."""
    normal = sorted({Path(os.path.normpath(p)) for p in paths})
    folded: list[Path] = []
    for path in normal:
        if not any(path.is_relative_to(parent) for parent in folded):
            folded.append(path)
    return folded


def plan_paths(
    config: Config,
    installed: Iterable[Module],
    future: Iterable[Module],
    own: Iterable[Path] = (),
) -> list[Path]:
    """The folded scope of a run: the dirs of the modules as they will be, the backup
    paths of every enabled module as installed and as it will be, `own` (hs-tx's
    install dir when phase 3 replaces it) and extra_paths."""
    future = list(future)
    backups = [p for m in [*installed, *future] if m.enabled for p in m.backup_paths]
    return fold([*(m.path for m in future), *own, *backups, *config.extra_paths])


def check_scope(config: Config, paths: list[Path]) -> list[ScopeEntry]:
    """Check every path and pick its backend; return the entries.

    Raises ScopeError (exit 2) for a path that may not be snapshotted, and
    NoSpaceError when the filesystems lack room for the snapshots.
    """
    state = Path(os.path.realpath(config.state_dir))
    entries = []
    for path in paths:
        real = Path(os.path.realpath(path))
        if state.is_relative_to(real) or real.is_relative_to(state):
            raise ScopeError(
                f"scope path {path} would hold or lie in the state dir {config.state_dir}",
                "move state_dir elsewhere or take the path out of backup_paths/extra_paths",
            )
        existed = os.path.lexists(path)
        size = _check_tree(path) if existed else 0
        backend = choose_backend(config.snapshot_backend, path, config.snapshots_dir)
        entries.append(ScopeEntry(path, existed, backend, size))
    check_free_space(config, entries)
    return entries


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
        size += st.st_blocks * 512
    return size


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
