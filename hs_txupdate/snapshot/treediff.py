"""Comparing a live tree with its manifest (see snapshot.manifest): which entries
changed, which are extra, which are missing.

Both are walked in the same order. A large tree (its manifest at least `SPLIT_FROM`
bytes) on a machine with more than one CPU is compared in two processes at once:
the walk order is cut at the entry whose line lies in the middle of the manifest
file, this process compares what comes before it and a child forked from it what
comes from it on, each reading and checking the whole manifest file. Most of a
comparison is an `lstat` of each entry and Python around it, so two halves take
a little over half the time. Should the child fail, its half is compared here.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from ..base.forking import Forked, fork_child, signals_deferred
from .entries import entry_type, fingerprint, join, walk, walk_from
from .manifest import Changes, Entry, Manifest, _parsed, _walks_before, aligned

SPLIT_FROM = 1 << 18  # bytes of manifest, about 4,000 entries: below, one process
_CHILD = "hs-tx-diff"  # the child's process name (ps, /proc/PID/comm)


def diff(live: Path, manifest: Manifest | None) -> Changes:
    """Compare the live tree at `live` with `manifest` (None: the path was absent),
    walking both in order. Raises DamagedError (a manifest file failing its checksum),
    OSError."""
    changes = Changes()
    if manifest is None:
        if os.path.lexists(live):
            changes.extra.append("")
        return changes
    if not os.path.lexists(live):  # the whole tree is gone
        for rel, entry in manifest.items():
            changes.missing.append(rel)
            changes.recorded[rel] = entry[0], entry[4]
        return changes
    middle = _middle(live, manifest)
    if middle is None:
        return _compare(live, walk(live), manifest.items())
    return _in_two(live, manifest, *middle)


def _compare(
    live: Path, tree: Iterable[tuple[str, os.stat_result]], recorded: Iterable[tuple[str, Entry]]
) -> Changes:
    """The differences between the walk `tree` of `live` and the manifest entries
    `recorded`, both in walk order and of the same part of the walk."""
    changes = Changes()
    for rel, st, entry in aligned(tree, recorded):
        if entry is None:
            changes.extra.append(rel)
            changes.recorded[rel] = None
        elif st is None or _differs(live, rel, st, entry):
            (changes.missing if st is None else changes.changed).append(rel)
            changes.recorded[rel] = entry[0], entry[4]
    return changes


def _differs(live: Path, rel: str, st: os.stat_result, recorded: Entry) -> bool:
    """True when the live entry `rel` (lstat `st`) is not the one `recorded`."""
    if entry_type(st) != recorded[0]:
        return True
    if recorded[3] is not None:  # the path is built only here: for every entry it costs a third
        return fingerprint(join(live, rel), st) != recorded[3]
    return st.st_ino != recorded[1] or st.st_ctime_ns != recorded[2]


def _middle(live: Path, manifest: Manifest) -> tuple[str, int] | None:
    """(the entry whose line starts nearest after the middle of the manifest file, where
    that line starts) when the tree is worth comparing in two processes, else None."""
    if manifest.file is None or len(os.sched_getaffinity(0)) < 2:
        return None
    path = manifest.file[0]
    if not (live.is_absolute() and path.is_absolute()):  # the child works in /
        return None
    try:
        size = os.path.getsize(path)
        if not stat.S_ISDIR(os.lstat(live).st_mode) or size < SPLIT_FROM:
            return None
        with open(path, "rb") as f:
            f.seek(size // 2)
            f.readline()  # the rest of the line the middle falls in
            at, line = f.tell(), f.readline()
    except OSError:
        return None  # then the comparison in one process says what is wrong
    if not line.endswith(b"\n"):
        return None
    # read unchecked, but only to cut the work: each half checks the whole file
    name = next(_parsed(line.decode("utf-8", "surrogateescape"), path))[0]
    return (name, at) if name else None


def _in_two(live: Path, manifest: Manifest, middle: str, at: int) -> Changes:
    """`diff` of a large tree: entries before `middle` (whose manifest line starts at
    byte `at`) compared here, the rest by a child at the same time."""
    child: Forked | None = None
    try:
        # no child: this process compares both halves; signals wait until it is noted
        with suppress(OSError), open(os.devnull, "wb") as null, signals_deferred():
            child = fork_child(
                lambda: _second_half(live, manifest, middle, at), _CHILD, [], null.fileno()
            )
        before = itertools.takewhile(lambda e: _walks_before(e[0], middle), walk(live))
        changes = _compare(live, before, manifest.items(stop=at))
        theirs = _answer(child)
    except BaseException:
        if child is not None:
            child.kill()
        raise
    finally:
        if child is not None:
            child.wait()
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()
    if theirs is None:  # the child failed: its half here, raising what it met
        theirs = _from_middle(live, manifest, middle, at)
    changes.changed += theirs.changed
    changes.extra += theirs.extra
    changes.missing += theirs.missing
    changes.recorded.update(theirs.recorded)
    return changes


def _from_middle(live: Path, manifest: Manifest, middle: str, at: int) -> Changes:
    """The differences from the entry `middle` (its manifest line at byte `at`) on."""
    return _compare(live, walk_from(live, middle), manifest.items(start=at))


def _second_half(live: Path, manifest: Manifest, middle: str, at: int) -> int:
    """The child's work: `_from_middle`, pickled to its stdout."""
    import pickle

    with open(1, "wb", closefd=False) as out:
        pickle.dump(_from_middle(live, manifest, middle, at), out)
    return 0


def _answer(child: Forked | None) -> Changes | None:
    """What the child sent, once it has ended; None when it failed or sent nothing."""
    if child is None or child.stdout is None:
        return None
    import pickle

    data = child.stdout.read()
    if child.wait() != 0:
        return None
    try:
        changes = pickle.loads(data)  # from our own child, over our own pipe
    except (pickle.UnpicklingError, EOFError):
        return None
    return changes if isinstance(changes, Changes) else None
