"""Incremental tar archives: a capture that holds only what changed since a full one.

A tar capture of a path that a kept full archive already holds (its *base*) lists,
with GNU tar's `--no-recursion`, every directory of the path and every other entry
that is not exactly as the base's manifest recorded it: same type, inode, ctime and
link count, and a ctime well before the base was taken (see snapshot.manifest), so
tar read it as it is now. Everything else is taken from the base. The archive is a
standard tar file too; its index names the base and its checksum (snapshot.tarindex),
so checking it checks which base it needs. To read one by hand: extract the base,
then this archive over it; the manifest beside it lists what existed (entries deleted
since the base are still in the base).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from .entries import entry_type, walk
from .manifest import Entry, Manifest, aligned, fingerprint_line

# a difference bigger than this share of its base is captured whole instead
MAX_SHARE = 0.5


def member(path: Path, rel: str) -> str:
    """The member name of entry `rel` (relative to `path`) in an archive of `path`."""
    return f"{path.name}/{rel}" if rel else path.name


def changed_since(path: Path, base: Manifest) -> tuple[list[str], int, str]:
    """(the member names an incremental archive of `path` holds, parents first: every
    directory and every entry not as `base` recorded it; the bytes of those files;
    what `tree_fingerprint` says of the tree this walk saw, which a manifest taken
    after tar ran matches when nothing changed meanwhile).
    Raises OSError when the tree cannot be read, DamagedError when the base's manifest
    fails its checksum."""
    names, size, walked = [], 0, hashlib.sha256()
    for rel, st, recorded in aligned(_archived(path), base.items()):
        if st is None:
            continue  # gone since the base
        kind = entry_type(st)
        walked.update(fingerprint_line(rel, kind, st.st_ino, st.st_ctime_ns))
        if kind == "d" or not as_recorded(recorded, (kind, st.st_ino, st.st_ctime_ns, st.st_nlink)):
            names.append(member(path, rel))
            size += st.st_size if kind == "f" else 0
    return names, size, walked.hexdigest()


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


def _archived(path: Path) -> Iterator[tuple[str, os.stat_result]]:
    """The entries of `path` tar archives with `--one-file-system`: the top of another
    filesystem, not what lies below it."""
    device = os.lstat(path).st_dev
    foreign: set[str] = set()
    for rel, st in walk(path):
        if rel and rel.rpartition("/")[0] in foreign:
            foreign.add(rel)
            continue
        if st.st_dev != device:
            foreign.add(rel)
        yield rel, st


def as_recorded(recorded: Entry | None, now: tuple[str, int, int, int]) -> bool:
    """True when an entry the base recorded as `recorded` (None: not at all), now of
    (type, inode, ctime, links) `now`, was not touched since well before the base was
    taken, so the base archive holds it as it is."""
    if recorded is None:
        return False
    kind, ino, ctime_ns, fingerprint, links = recorded
    # an entry recorded with a fingerprint changed too close to the base to trust its ctime
    return fingerprint is None and (kind, ino, ctime_ns, links) == now
