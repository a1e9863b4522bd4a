"""Incremental tar archives: a capture that holds only what changed since a full one.

A tar capture of a path that a kept full archive already holds (its *base*) lists,
with GNU tar's `--no-recursion`, every directory of the path and every other entry
that is not exactly as the base's manifest recorded it: same type, inode, ctime and
link count, and a ctime well before the base was taken (see snapshot.manifest), so
tar read it as it is now. Everything else is taken from the base. The walk that lists
the members also writes the manifest; once tar has run, each member is looked at
again, and when none moved (tar read each as the walk saw it), that manifest is the
snapshot's without a second walk of the tree. The archive is a standard tar file
too; its index names the base and its checksum (snapshot.tarindex), so checking it
checks which base it needs. To read one by hand: extract the base, then this archive
over it; the manifest beside it lists what existed (entries deleted since the base
are still in the base).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .entries import entry_type, join, walk
from .manifest import Entry, Manifest, Written, aligned, manifest_entry, write_entries

# a difference bigger than this share of its base is captured whole instead
MAX_SHARE = 0.5


def member(path: Path, rel: str) -> str:
    """The member name of entry `rel` (relative to `path`) in an archive of `path`."""
    return f"{path.name}/{rel}" if rel else path.name


class Listing:
    """The members an increment of `path` holds (see `changed_since`), the bytes of its
    files, and how the walk that listed them saw each: tar, reading them after it, read
    each as the walk saw it when `unchanged` says so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: list[str] = []
        self.size = 0
        self._seen: list[tuple[str, tuple[str, int, int, int]]] = []

    def add(self, rel: str, kind: str, st: os.stat_result) -> None:
        """List entry `rel`, of type `kind` and lstat `st`."""
        self.names.append(member(self.path, rel))
        self.size += st.st_size if kind == "f" else 0
        self._seen.append((rel, (kind, st.st_ino, st.st_ctime_ns, st.st_nlink)))

    def unchanged(self) -> bool:
        """True when every listed entry still has the type, inode, ctime and link count
        the walk saw (any write, chmod, rename or entry added below moves a ctime)."""
        for rel, seen in self._seen:
            try:
                st = os.lstat(join(self.path, rel))
            except OSError:
                return False
            if (entry_type(st), st.st_ino, st.st_ctime_ns, st.st_nlink) != seen:
                return False
        return True


def changed_since(
    path: Path, base: Manifest, taken_ns: int, dest: Path | None
) -> tuple[Listing, Written | None]:
    """Walk `path` once: list the members an incremental archive of it holds, parents
    first (every directory, and every entry not as `base` recorded it), and write the
    manifest (taken at `taken_ns`) of the tree as this walk saw it to `dest`, as
    write_manifest would (None: none). Return the listing and what write_manifest
    returns (None without `dest`). That manifest is the snapshot's once tar has read
    every member as the walk saw it (`Listing.unchanged`): the base holds every other
    entry as the walk saw it.
    Raises OSError when the tree cannot be read, ScopeError at a socket, DamagedError
    when the base's manifest fails its checksum."""
    listing = Listing(path)
    entries = _listed(path, base, taken_ns, listing)
    if dest is None:
        for _ in entries:
            pass
        return listing, None
    return listing, write_entries(dest, taken_ns, entries)


def _listed(
    path: Path, base: Manifest, taken_ns: int, listing: Listing
) -> Iterator[tuple[str, Entry]]:
    """The manifest entries of `path` in walk order, listing in `listing` what an
    increment archives: tar with `--one-file-system` takes the top of another
    filesystem, not what lies below it."""
    device = os.lstat(path).st_dev
    foreign: set[str] = set()
    for rel, st, recorded in aligned(walk(path), base.items()):
        if st is None:
            continue  # gone since the base
        entry = manifest_entry(path, rel, st, taken_ns)
        yield rel, entry
        if rel and rel.rpartition("/")[0] in foreign:
            foreign.add(rel)
            continue
        if st.st_dev != device:
            foreign.add(rel)
        kind = entry[0]
        if kind == "d" or not as_recorded(recorded, (kind, st.st_ino, st.st_ctime_ns, st.st_nlink)):
            listing.add(rel, kind, st)


def holds_changes(path: Path, base: Manifest, taken: Manifest, members: set[str]) -> bool:
    """True when an incremental archive of `path` whose members are `members` holds
    every entry that the manifest taken with it (`taken`, walked after tar ran) does
    not show as `base` recorded it: nothing changed while tar ran that it missed.
    Raises DamagedError when a manifest fails its checksum."""
    missed = False
    for rel, now, recorded in aligned(taken.items(), base.items()):  # both read through
        if now is not None and member(path, rel) not in members:
            missed = missed or not as_recorded(recorded, (now[0], now[1], now[2], now[4]))
    return not missed


def as_recorded(recorded: Entry | None, now: tuple[str, int, int, int]) -> bool:
    """True when an entry the base recorded as `recorded` (None: not at all), now of
    (type, inode, ctime, links) `now`, was not touched since well before the base was
    taken, so the base archive holds it as it is."""
    if recorded is None:
        return False
    kind, ino, ctime_ns, fingerprint, links = recorded
    # an entry recorded with a fingerprint changed too close to the base to trust its ctime
    return fingerprint is None and (kind, ino, ctime_ns, links) == now
