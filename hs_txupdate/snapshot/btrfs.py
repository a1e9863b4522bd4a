"""The btrfs backend: a read-only snapshot of the subvolume that holds each path.

Snapshots live in a `.hs-tx-snapshots` subvolume at the top of that subvolume
(same filesystem, and never inside a snapshot of its parent, since btrfs
snapshots stop at nested subvolumes), named `<journal-uuid>-<txid>-<n>`. Capturing
is O(1) in the size of the data; a restore reflinks back only what changed.

The ref recorded in the journal holds the snapshot's own btrfs UUID and the
transaction of its last change (see snapshot.subvol): before a restore or a delete,
the snapshot must still be read-only with both unchanged, or hs-tx refuses to use
it (a snapshot set writable and edited, or one put in its place, is not the state
the journal recorded).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..base.errors import DamagedError
from ..base.fsio import fsync_dir
from .base import Captured, SnapshotTarget
from .changelist import PROBE_SUFFIX, ChangeLists, changes_between, delete_probe
from .entries import SNAPSHOT_STORE, walk
from .manifest import Changes
from .subvol import (
    SUBVOLUME_ROOT_INO,
    create_subvolume,
    delete_subvolume,
    snapshot_readonly,
    subvolume_identity,
)

BTRFS_SUPER_MAGIC = 0x9123683E
_STATFS_BUFFER = 256  # more than struct statfs takes on any Linux
_libc = ctypes.CDLL(None, use_errno=True)
_LEGACY_NAME = re.compile(r"[0-9]+-[0-9]+")  # `<txid>-<n>`, before journal identities
# Headroom for snapshot metadata and copy-on-write during the run.
MIN_FREE = 16 << 20


def is_btrfs(path: Path) -> bool:
    """True when `path` (or its nearest existing parent) lives on btrfs (statfs's
    f_type; False when statfs fails)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    buf = ctypes.create_string_buffer(_STATFS_BUFFER)
    if _libc.statfs(os.fsencode(probe), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value == BTRFS_SUPER_MAGIC  # f_type comes first


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


def _mismatch(snapshot: Path, ref: dict[str, str]) -> str | None:
    """Why the snapshot at `snapshot` is not the one `ref` recorded, or None."""
    if "uuid" not in ref:  # recorded before snapshots carried their identity
        return None
    now = subvolume_identity(snapshot)
    if now is None:
        return "it is not a btrfs subvolume"
    if now.uuid != ref["uuid"]:
        return f"its UUID is {now.uuid}, the journal recorded {ref['uuid']}"
    if not now.readonly:
        return "it is no longer read-only"
    if str(now.ctransid) != ref["ctransid"]:
        return (
            f"it was last changed in btrfs transaction {now.ctransid}, after the journal"
            f" recorded it ({ref['ctransid']})"
        )
    return None


class BtrfsBackend:
    """Read-only subvolume snapshots; the ref is JSON {snapshot, rel, uuid, ctransid}."""

    name = "btrfs"
    disposable = False

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
            create_subvolume(store, 0o700)
            fsync_dir(root)
        # The snapshots taken before a transaction changes anything show the same
        # state, so one taken for an earlier path on this subvolume serves this path
        # as well; one taken mid-run (a StateManager backup) must show the state now.
        earlier = [] if target.fresh else sorted(store.glob(f"{target.tx}-*"))
        snapshot = earlier[0] if earlier else store / target.name
        if not earlier:
            snapshot_readonly(root, store, target.name)
        identity = subvolume_identity(snapshot)
        if identity is None or not identity.readonly:
            raise DamagedError(f"{snapshot} is not the read-only snapshot just taken", "")
        ref = {
            "snapshot": str(snapshot),
            "rel": os.path.relpath(target.path, root),
            "uuid": identity.uuid,
            "ctransid": str(identity.ctransid),
        }
        return Captured(ref=json.dumps(ref))

    def _tree(
        self, target: SnapshotTarget, captured: Captured
    ) -> tuple[Path, Path, dict[str, str]]:
        ref = _parse_ref(captured.ref, target.journal)
        snapshot = Path(ref["snapshot"])
        return snapshot, snapshot / ref["rel"] if ref["rel"] != "." else snapshot, ref

    def manifest_root(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The path as the snapshot holds it (same inode numbers and ctimes as live)."""
        return self._tree(target, captured)[1]

    def changes(
        self, target: SnapshotTarget, captured: Captured, lists: ChangeLists | None = None
    ) -> Changes:
        """How the live `target.path` differs from the snapshot, from btrfs's own change
        list (see snapshot.changelist; read through `lists` when given, which shares it
        between the paths of one snapshot), after checking the snapshot is the one
        recorded. Raises DamagedError, OSError."""
        snapshot, tree, ref = self._tree(target, captured)
        self.check(target, captured)
        if not os.path.lexists(target.path):
            return Changes(missing=[rel for rel, _ in walk(tree)])
        rel = "" if ref["rel"] == "." else ref["rel"]
        subvolume = subvolume_root(target.path)
        with ChangeLists() as own:  # a probe of its own ends here; that of `lists`, with it
            return (lists or own).changes_since(snapshot, rel, target.path, subvolume)

    def changes_between(
        self, target: SnapshotTarget, earlier: Captured, later: Captured
    ) -> Changes:
        """How `target.path` as the snapshot `later` holds it differs from it as the
        snapshot `earlier` holds it (two snapshots of its subvolume, holding it at the
        same place), after checking both are the ones recorded. Raises DamagedError,
        OSError."""
        snapshot, _, ref = self._tree(target, earlier)
        other = self._tree(target, later)[0]
        self.check(target, earlier)
        self.check(target, later)
        return changes_between(snapshot, other, "" if ref["rel"] == "." else ref["rel"])

    @contextmanager
    def reference(
        self, target: SnapshotTarget, captured: Captured, entries: list[str] | None = None
    ) -> Iterator[Path]:
        """The path inside the read-only snapshot (where every entry already is)."""
        yield self.check(target, captured)

    def check(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The path inside the snapshot, after checking the snapshot is there and is
        the one recorded (UUID, read-only, unchanged since: see snapshot.subvol).

        Raises DamagedError otherwise.
        """
        snapshot, tree, ref = self._tree(target, captured)
        if not snapshot.is_dir():
            raise DamagedError(
                f"btrfs snapshot {snapshot} of {target.path} is missing",
                "restore the path by hand from a backup; the journal cannot repair it",
            )
        _refuse_if_changed(snapshot, ref, target)
        return tree

    def delete(self, target: SnapshotTarget, ref: str | None) -> None:
        """Delete the snapshot subvolume, if it is the one recorded, and commit the deletion.

        Raises DamagedError, deleting nothing, when it is not.
        """
        if ref is not None:
            recorded = _parse_ref(ref, target.journal)
            snapshot = Path(recorded["snapshot"])
            if os.path.lexists(snapshot):
                _refuse_if_changed(snapshot, recorded, target)
        else:  # capture was cut off before its ref was recorded: the name is this run's
            existing = target.path if target.path.exists() else target.path.parent
            snapshot = subvolume_root(existing) / SNAPSHOT_STORE / target.name
        delete_probe(snapshot.with_name(snapshot.name + PROBE_SUFFIX))  # left by a crash
        if os.path.lexists(snapshot):
            delete_subvolume(snapshot, commit=True)


def _parse_ref(text: str, owner: str) -> dict[str, str]:
    """A recorded btrfs ref, checked to name a snapshot of journal `owner` (its UUID;
    '' for any) inside a snapshot store, and a path inside that snapshot; a ref
    without the snapshot's identity only with a name from before identities.

    Raises DamagedError for anything else, so a damaged or crafted journal row can
    never make hs-tx read another subvolume or delete another journal's snapshot.
    """
    try:
        ref = json.loads(text)
        snapshot, rel = Path(ref["snapshot"]), Path(ref["rel"])
        ok = snapshot.is_absolute() and snapshot.parent.name == SNAPSHOT_STORE
        ok = ok and ".." not in snapshot.parts and not rel.is_absolute() and ".." not in rel.parts
        if "uuid" in ref:
            ok = ok and "ctransid" in ref and snapshot.name.startswith(f"{owner}-" if owner else "")
        else:
            ok = ok and _LEGACY_NAME.fullmatch(snapshot.name) is not None
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DamagedError(
            f"the journal's record of a btrfs snapshot is malformed: {text[:200]!r}",
            "the journal row was damaged or edited; restore by hand from the snapshot store",
        )
    return {k: str(v) for k, v in ref.items()}


def _refuse_if_changed(snapshot: Path, ref: dict[str, str], target: SnapshotTarget) -> None:
    """Raise DamagedError when `snapshot` is not the subvolume `ref` recorded."""
    why = _mismatch(snapshot, ref)
    if why is not None:
        raise DamagedError(
            f"btrfs snapshot {snapshot} of {target.path} is not the one recorded: {why}",
            "hs-tx will neither restore from it nor delete it; inspect it"
            " (btrfs subvolume show) and restore by hand if you trust it",
        )
