"""Change lists from btrfs itself: how a live tree differs from a read-only snapshot
of its subvolume, read from the send stream without file data between that
snapshot and a probe snapshot of the live subvolume (see snapshot.sendstream). It
costs what changed, never a walk of the whole tree: only the subtrees of renamed or
deleted directories are walked (btrfs reports such a directory once, without its
contents), and the other links of a changed file with several are looked up by
inode.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .entries import entry_type, is_own_name, join, walk
from .manifest import Changes
from .sendstream import LINK, RENAME, SNAPSHOT, UTIMES, operations
from .subvol import delete_subvolume, inode_paths, snapshot_readonly

PROBE_SUFFIX = "-probe"


def changes_since(snapshot: Path, rel: str, live: Path, subvolume: Path) -> Changes:
    """Given the read-only `snapshot` (the top of a snapshot of the btrfs subvolume whose
    top directory is `subvolume`), the entry `rel` ('' for the top) of that subvolume at
    which the existing tree `live` lies: return how `live` differs from `snapshot/rel`,
    hs-tx's own names left out.

    Takes a probe snapshot beside `snapshot` and deletes it again (a stale one from an
    interrupted call first); the send stream is kept in memory, never on disk.
    Raises OSError.
    """
    with ChangeLists() as lists:
        return lists.changes_since(snapshot, rel, live, subvolume)


class ChangeLists:
    """The change lists of one pass over a transaction's paths (a commit's diffs, a
    rollback's restores), read once per snapshot: paths captured in one snapshot share
    one probe snapshot and one send stream. Each path is still sorted against its live
    tree as it is when asked; in a rollback, where an earlier path's restore may have
    put back a name a later path lists (they nest), that name is put back again from
    the same snapshot, to the same state.

    Its probe snapshots are deleted when the pass ends (leaving the `with`), not as
    soon as they are read: btrfs drops a deleted subvolume's tree in the background,
    and a rollback's restores and syncs waited for that work. One left by a crash, or
    one that cannot be deleted then, goes with its snapshot (BtrfsBackend.delete)."""

    def __init__(self) -> None:
        self._read: dict[tuple[Path, Path], tuple[set[str], set[str]]] = {}
        self._probes: list[Path] = []

    def __enter__(self) -> ChangeLists:
        return self

    def __exit__(self, *exc: object) -> None:
        """Delete the probe snapshots of this pass."""
        for probe in self._probes:
            with contextlib.suppress(OSError):  # deleted with its snapshot instead
                delete_probe(probe)
        self._probes.clear()

    def changes_since(self, snapshot: Path, rel: str, live: Path, subvolume: Path) -> Changes:
        """See the module's `changes_since`; the change list of `snapshot` is read at
        the first call. Raises OSError."""
        key = (snapshot, subvolume)
        if key not in self._read:
            probe = snapshot.with_name(snapshot.name + PROBE_SUFFIX)
            delete_probe(probe)
            snapshot_readonly(subvolume, probe.parent, probe.name)
            self._probes.append(probe)
            self._read[key] = _touched(snapshot, probe)
        touched, moved = self._read[key]
        return _classify(snapshot, rel, live, touched, moved, os.lstat(subvolume).st_dev)


def changes_between(snapshot: Path, later: Path, rel: str) -> Changes:
    """Given two read-only snapshots of one btrfs subvolume (their top directories) and
    an entry `rel` of it, return how `later/rel` differs from `snapshot/rel`, hs-tx's
    own names left out. Raises OSError."""
    touched, moved = _touched(snapshot, later)
    return _classify(snapshot, rel, join(later, rel), touched, moved, os.lstat(later).st_dev)


def _touched(snapshot: Path, later: Path) -> tuple[set[str], set[str]]:
    """(every entry the change list from `snapshot` to `later` names, reading a file
    left out and the other links of a changed file added; those a rename moved)."""
    touched, moved, timed = _read_stream(snapshot, later)
    touched -= _read_only(timed, snapshot, later)
    return touched | _links_of(touched, snapshot, later), moved


def delete_probe(probe: Path) -> None:
    """Delete the probe snapshot `probe` when there is one. Raises OSError."""
    if os.path.lexists(probe):
        delete_subvolume(probe)


def _read_stream(parent: Path, probe: Path) -> tuple[set[str], set[str], set[str]]:
    """Return (every path the send stream from `parent` to `probe` names, those of them
    a rename moved to or from, those named only by `utimes`), relative to the
    subvolume's top ('' for the top)."""
    touched: set[str] = set()
    moved: set[str] = set()
    timed: set[str] = set()
    other: set[str] = set()
    for op, path, dest in operations(parent, probe):
        if op == SNAPSHOT:
            continue
        found = {path} if dest is None or op not in (RENAME, LINK) else {path, dest}
        touched |= found
        (timed if op == UTIMES else other).update(found)
        if op == RENAME:
            moved |= found
    return touched, moved, timed - other


def _read_only(timed: set[str], snapshot: Path, probe: Path) -> set[str]:
    """The entries among `timed` (named by `utimes` alone) whose only change is their
    access time (same inode, ctime and mtime): reading a file is no change of it."""

    def identity(top: Path, rel: str) -> tuple[int, int, int] | None:
        try:
            st = os.lstat(join(top, rel))
        except OSError:
            return None
        return st.st_ino, st.st_ctime_ns, st.st_mtime_ns

    return {
        rel
        for rel in timed
        if (before := identity(snapshot, rel)) and before == identity(probe, rel)
    }


def _links_of(touched: set[str], snapshot: Path, probe: Path) -> set[str]:
    """The other links, before and now, of every touched non-directory that has several:
    a change through one link is reported at that link alone."""
    peers: set[str] = set()
    for top in (snapshot, probe):
        seen: set[int] = set()
        for rel in touched:
            try:
                st = os.lstat(join(top, rel))
            except OSError:
                continue
            if entry_type(st) != "d" and st.st_nlink > 1 and st.st_ino not in seen:
                seen.add(st.st_ino)
                peers.update(inode_paths(top, st.st_ino))
    return peers


def _classify(
    snapshot: Path, rel: str, live: Path, names: set[str], moved: set[str], dev: int
) -> Changes:
    """Sort the names lying under `rel` into changed / extra / missing entries of `live`
    against `snapshot/rel`, adding what lies below a moved directory on either side;
    `dev`: the subvolume's device (`live` itself may be gone)."""
    reference = join(snapshot, rel)
    wanted = {n for n in (_below(name, rel) for name in names) if n is not None}
    for name in {_below(m, rel) for m in moved}:
        for top in (reference, live):
            here = None if name is None else join(top, name)
            if here is not None and os.path.isdir(here) and not os.path.islink(here):
                wanted.update(r for r, _ in _subtree(top, str(name)))
    wanted = {n for n in wanted if not _is_own(n) and not _elsewhere(live, n, dev)}
    changes = Changes()
    for name in sorted(wanted, key=lambda r: (r.count("/"), r)):
        before, now = os.path.lexists(join(reference, name)), os.path.lexists(join(live, name))
        if before and now:
            changes.changed.append(name)
        elif before:
            changes.missing.append(name)
        elif now:
            changes.extra.append(name)
    return changes


def _elsewhere(live: Path, name: str, dev: int) -> bool:
    """True when the live entry `name` lies on another filesystem or subvolume than
    `live` (device `dev`): a mount point, a nested subvolume, not this tree's to restore."""
    try:
        return os.lstat(join(live, name)).st_dev != dev
    except OSError:
        return False


def _below(name: str, rel: str) -> str | None:
    """`name` relative to `rel` when it lies at or below it, else None."""
    if not rel:
        return name
    if name == rel:
        return ""
    return name[len(rel) + 1 :] if name.startswith(rel + "/") else None


def _is_own(rel: str) -> bool:
    return any(is_own_name(part) for part in rel.split("/"))


def _subtree(top: Path, rel: str) -> Iterator[tuple[str, os.stat_result]]:
    """(entry relative to `top`, lstat) of `rel` and everything below it on the same
    subvolume: a nested subvolume or a mount point below it is another tree, never
    this one's change."""
    dev = os.lstat(top).st_dev
    other: str | None = None
    for below, st in walk(join(top, rel)):
        name = f"{rel}/{below}" if below and rel else below or rel
        if other is not None and name.startswith(other + "/"):
            continue
        if st.st_dev != dev:
            other = name
            continue
        yield name, st
