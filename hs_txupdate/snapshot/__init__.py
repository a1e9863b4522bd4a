"""Snapshot backends (btrfs, tar, sqlite), their registry and autodetection."""

from __future__ import annotations

from pathlib import Path

from ..base.errors import ScopeError
from .base import Backend, Captured, SnapshotTarget
from .btrfs import BtrfsBackend, is_btrfs
from .sqlite import SqliteBackend
from .tar import TarBackend

__all__ = ["Backend", "Captured", "SnapshotTarget", "backend_by_name", "choose_backend"]


def backend_by_name(name: str, snapshots_dir: Path) -> Backend:
    """The backend registered under `name` (btrfs, tar, or sqlite for databases)."""
    if name == "btrfs":
        return BtrfsBackend()
    if name == "tar":
        return TarBackend(snapshots_dir)
    if name == "sqlite":
        return SqliteBackend(snapshots_dir)
    raise ScopeError(f"unknown snapshot backend {name!r}", "use auto, btrfs or tar")


def choose_backend(configured: str, path: Path, snapshots_dir: Path) -> str:
    """The backend name for `path`: `auto` picks btrfs where the path lives on btrfs.

    Raises ScopeError when btrfs is configured for a path that is not on btrfs.
    """
    on_btrfs = is_btrfs(path)
    if configured == "auto":
        return "btrfs" if on_btrfs else "tar"
    if configured == "btrfs" and not on_btrfs:
        raise ScopeError(
            f"{path} is not on btrfs but snapshot.backend is 'btrfs'",
            "set snapshot.backend to 'auto' or 'tar'",
        )
    return configured
