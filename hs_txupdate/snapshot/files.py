"""Snapshot files in the state dir (tar archives, database copies): where the journal
says they are, checked before they are read, removed with their transaction's dir."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..base.errors import DamagedError
from ..base.fsio import fsync_dir
from .base import SnapshotTarget


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verified_file(path: Path, checksum: str | None, what: str, target: SnapshotTarget) -> Path:
    """`path` (a snapshot file of `target`, called `what` in messages), after checking
    it is there with the recorded checksum. Raises DamagedError otherwise."""
    if not path.is_file():
        raise DamagedError(
            f"{what} {path} of {target.path} is missing",
            "restore it by hand from a backup; the journal cannot repair it",
        )
    if checksum and sha256_file(path) != checksum:
        raise DamagedError(
            f"{what} {path} of {target.path} fails its checksum",
            "do not use it; restore it by hand from a backup",
        )
    return path


def recorded_file(
    ref: str | None, target: SnapshotTarget, fallback: Path, snapshots_dir: Path
) -> Path:
    """The snapshot file a journal row recorded (`fallback`, this run's own name, when
    none was recorded yet), checked to lie in a transaction dir of this journal
    (`snapshots_dir/<journal-uuid>-<txid>/`, or `<txid>/` from before identities)
    that is a real directory.

    Raises DamagedError otherwise: a damaged or crafted row never makes hs-tx read or
    delete a file it did not write.
    """
    path = fallback if ref is None else Path(ref)
    tx_dir = path.parent
    ok = path.is_absolute() and tx_dir.parent == snapshots_dir and ".." not in path.parts
    ok = ok and (tx_dir.name.isdigit() or tx_dir.name.startswith(f"{target.journal}-"))
    ok = ok and not tx_dir.is_symlink()
    if not ok:
        raise DamagedError(
            f"the journal records snapshot file {ref!r}, which is not in {snapshots_dir}",
            "the journal row was damaged or edited; hs-tx will not touch that file",
        )
    return path


def remove_file_snapshot(path: Path) -> None:
    """Remove a snapshot file (and its partial), and its transaction's dir once empty."""
    for each in (path, path.with_name(path.name + ".partial")):
        each.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()
    if path.parent.parent.is_dir():
        fsync_dir(path.parent.parent)
