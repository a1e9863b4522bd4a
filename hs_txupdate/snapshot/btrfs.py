"""The btrfs backend: a read-only snapshot of the subvolume that holds each path.

Snapshots live in a `.hs-tx-snapshots` subvolume at the top of that subvolume
(same filesystem, and never inside a snapshot of its parent, since btrfs
snapshots stop at nested subvolumes), named `<txid>-<n>`. Capturing is O(1) in
the size of the data; a restore reflinks back only what changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..base.errors import DamagedError
from ..base.fsio import fsync_dir
from ..base.proc import run
from .base import Captured, SnapshotTarget
from .entries import SNAPSHOT_STORE

BTRFS_SUPER_MAGIC = 0x9123683E
SUBVOLUME_ROOT_INO = 256
# Headroom for snapshot metadata and copy-on-write during the run.
MIN_FREE = 16 << 20


def is_btrfs(path: Path) -> bool:
    """True when `path` (or its nearest existing parent) lives on btrfs."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    result = run(["stat", "--file-system", "--format=%t", str(probe)], check=False)
    return result.returncode == 0 and result.stdout.strip() == format(BTRFS_SUPER_MAGIC, "x")


def subvolume_root(path: Path) -> Path:
    """The top directory of the btrfs subvolume that holds the existing `path`."""
    current = Path(os.path.abspath(path))
    st = os.lstat(current)
    while st.st_ino != SUBVOLUME_ROOT_INO and current != current.parent:
        parent_st = os.lstat(current.parent)
        if parent_st.st_dev != st.st_dev:
            break
        current, st = current.parent, parent_st
    return current


class BtrfsBackend:
    """Read-only subvolume snapshots; the ref is JSON {snapshot, rel}."""

    name = "btrfs"

    def supports(self, path: Path) -> bool:
        """True when the existing `path` is on btrfs."""
        return is_btrfs(path)

    def required_space(self, path: Path, size: int) -> list[tuple[Path, int]]:
        """Only headroom on the filesystem itself: a snapshot copies no data."""
        return [(path if path.exists() else path.parent, MIN_FREE)]

    def capture(self, target: SnapshotTarget) -> Captured:
        """Snapshot the subvolume holding the path, read-only, committed to disk
        (once per subvolume and transaction)."""
        root = subvolume_root(target.path)
        store = root / SNAPSHOT_STORE
        if not store.exists():
            run(["btrfs", "subvolume", "create", str(store)])
            os.chmod(store, 0o700)
            fsync_dir(root)
        # The snapshots taken before a transaction changes anything show the same
        # state, so one taken for an earlier path on this subvolume serves this path
        # as well; one taken mid-run (a StateManager backup) must show the state now.
        earlier = [] if target.fresh else sorted(store.glob(f"{target.tx_id}-*"))
        snapshot = earlier[0] if earlier else store / target.name
        if not earlier:
            run(["btrfs", "subvolume", "snapshot", "-r", str(root), str(snapshot)])
            run(["btrfs", "filesystem", "sync", str(root)])
        rel = os.path.relpath(target.path, root)
        return Captured(ref=json.dumps({"snapshot": str(snapshot), "rel": rel}))

    def _tree(self, captured: Captured) -> tuple[Path, Path]:
        ref = json.loads(captured.ref)
        snapshot = Path(ref["snapshot"])
        return snapshot, snapshot / ref["rel"] if ref["rel"] != "." else snapshot

    def manifest_root(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The path as the snapshot holds it (same inode numbers and ctimes as live)."""
        return self._tree(captured)[1]

    @contextmanager
    def reference(
        self, target: SnapshotTarget, captured: Captured, entries: list[str] | None = None
    ) -> Iterator[Path]:
        """The path inside the read-only snapshot (where every entry already is)."""
        yield self.check(target, captured)

    def check(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The path inside the snapshot, after checking the snapshot is there.

        Raises DamagedError otherwise.
        """
        snapshot, tree = self._tree(captured)
        if not snapshot.is_dir():
            raise DamagedError(
                f"btrfs snapshot {snapshot} of {target.path} is missing",
                "restore the path by hand from a backup; the journal cannot repair it",
            )
        return tree

    def delete(self, target: SnapshotTarget, ref: str | None) -> None:
        """Delete the snapshot subvolume and commit the deletion."""
        if ref is not None:
            snapshot = Path(json.loads(ref)["snapshot"])
        else:
            existing = target.path if target.path.exists() else target.path.parent
            snapshot = subvolume_root(existing) / SNAPSHOT_STORE / target.name
        if snapshot.exists():
            run(["btrfs", "subvolume", "delete", "--commit-after", str(snapshot)])
