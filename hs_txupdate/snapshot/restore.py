"""Restoring a tree: making the live tree exactly like a reference, touching only what changed.

Every entry is built under a temp name beside its final one and renamed into
place, so at every moment it is either the old entry or the restored one. Each
entry put back is then read again and compared with the reference's
(snapshot.restored), so a restore that returns has been seen to be exact.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..base import activity
from ..base.errors import DamagedError
from ..base.fsio import fsync_dir, syncfs
from .entries import TMP_PREFIX, entry_type, join, remove_entry, with_ancestors
from .manifest import Changes
from .replica import apply_metadata, materialize
from .restored import Put, Seen, Xattrs, check_entry, check_gone, check_put, expect


@dataclass
class _RestoreState:
    """What one restore pass has done so far (for hard links and dir times)."""

    linked: dict[tuple[int, int], Path] = field(default_factory=dict)
    dirs_to_fix: set[str] = field(default_factory=set)
    renames: list[tuple[Path, Path]] = field(default_factory=list)  # built, not yet in place
    put: list[Put] = field(default_factory=list)  # the batch's entries, checked once in place
    disposable: bool = False  # the reference's entries may be moved into place
    data_written: bool = False  # a built entry's data may not be on disk yet
    # a disposable reference's dirs as they were before an entry was moved out of them
    dir_stats: dict[str, os.stat_result] = field(default_factory=dict)
    ref_stats: dict[str, os.stat_result] = field(default_factory=dict)  # lstat when planned
    no_links: set[str] = field(default_factory=set)  # dirs of the batch seen not to be links


Announce = Callable[[str, list[str]], None]
Check = Callable[[], object]  # reads back an entry put in place; raises DamagedError


def restore(
    live: Path,
    reference: Path | None,
    changes: Changes,
    announce: Announce | None = None,
    batch_size: int = 256,
    disposable: bool = False,
) -> int:
    """Make `live` exactly like `reference` (None: make it absent), touching only `changes`.

    Each file is built under a temp name beside its final one and renamed into
    place, so every entry is either old or new. Work is done in batches;
    `announce("intent", entries)` is called before a batch acts (so a caller can
    journal it) and `announce("done", entries)` once it is durable. Running
    restore again after an interruption finishes the job, since a new diff
    finds what is left. `disposable`: `reference` is a copy made for this restore, whose
    entries are moved into place instead of copied. Returns how many entries it put
    back or removed, each seen afterwards to be the reference's (or gone).

    Raises DamagedError when an entry is not the reference's once in place (see
    snapshot.restored) or a link was planted in the way; OSError.
    """
    refuse_links_above(live)
    if reference is None or not os.path.lexists(reference):
        if not os.path.lexists(live):
            return 0
        _announce(announce, "intent", [""])
        remove_entry(live)
        fsync_dir(live.parent)
        check_gone(live, "")
        _announce(announce, "done", [""])
        return 1
    state = _RestoreState(disposable=disposable)
    work = _plan(live, reference, changes, state.ref_stats)
    put = {rel for action, rel in work if action == "put"}
    what = f"restoring {live}"
    unsynced: list[str] = []  # the last batch of entries: in place, made durable below
    checks: list[Check] = []  # and their checks, made while it syncs
    for start in range(0, len(work), batch_size):
        chunk = work[start : start + batch_size]
        rels = [rel for _, rel in chunk]
        _announce(announce, "intent", rels)
        for n, (action, rel) in enumerate(chunk, start):
            activity.tick(what, n, len(work))
            _apply(action, rel, live, reference, state)
        _put_in_place(live, state)
        checks = [partial(check_put, live, entry) for entry in state.put]
        state.put.clear()
        state.no_links.clear()
        if start + batch_size < len(work):
            _sync_checking(live, checks)
            _announce(announce, "done", rels)
        else:
            unsynced = rels
    activity.end()
    # the directories' times last (putting entries back changed them); the first batch
    # of them shares its sync with the last batch of entries
    fix = sorted(state.dirs_to_fix, key=lambda r: (-r.count("/"), r))
    for start in range(0, len(fix), batch_size):
        dirs = fix[start : start + batch_size]
        rels = [f"{rel}/" for rel in dirs]
        _announce(announce, "intent", rels)
        for rel in dirs:
            target = join(live, rel)
            if _is_dir(target):
                source = join(reference, rel)
                st = state.dir_stats.get(rel) or os.lstat(source)
                want = Seen.of(source, st)
                apply_metadata(source, target, st, want.xattrs)
                checks.append(partial(check_entry, live, rel, want))
        _sync_checking(live, checks)
        checks = []
        if unsynced:
            _announce(announce, "done", unsynced)
            unsynced = []
        _announce(announce, "done", rels)
    if unsynced:
        _sync_checking(live, checks)
        _announce(announce, "done", unsynced)
    for action, rel in work:
        if action == "remove" and rel not in put:
            check_gone(live, rel)
    return len({rel for _, rel in work})


def refuse_links_above(live: Path) -> None:
    """Check that no directory above the scope path `live` is a symbolic link (scope
    paths are resolved when planned, so one now is planted): a restore or delete
    through it would change what lies outside the scope.

    Raises DamagedError naming the link.
    """
    for above in reversed(live.parents[:-1]):  # from the top, "/" itself excepted
        try:
            is_link = stat.S_ISLNK(os.lstat(above).st_mode)
        except FileNotFoundError:
            return
        if is_link:
            _refuse_link(above, live)


def _refuse_link(link: Path, live: Path) -> None:
    raise DamagedError(
        f"{link} is a symbolic link (to {os.readlink(link)}) where the snapshot of {live}"
        " had a directory; hs-tx will not write through it",
        f"inspect it: something replaced it during the run; remove the link, then run"
        f" hs-tx recover to finish putting {live} back",
    )


def _refuse_links_within(live: Path, rel: str, seen: set[str]) -> None:
    """Raise DamagedError when a directory between `live` and entry `rel` is a link
    (the plan removes changed entries first, so one there now was planted); `seen`:
    those already found not to be one in this batch, added to."""
    parent = rel.rpartition("/")[0]
    if not parent or parent in seen:
        return
    here = live
    for part in parent.split("/"):
        here = here / part
        if os.path.islink(here):
            _refuse_link(here, live)
    seen.update(with_ancestors(parent)[1:])


def _announce(announce: Announce | None, status: str, rels: list[str]) -> None:
    if announce is not None:
        announce(status, rels)


def _plan(
    live: Path, reference: Path, changes: Changes, ref_stats: dict[str, os.stat_result]
) -> list[tuple[str, str]]:
    """Order the work: removals first (deepest first), then creations top-down; the
    reference's entries lstat-ed on the way are left in `ref_stats`."""
    ref_types = {r: _lexists_type(join(reference, r), ref_stats, r) for r in changes.changed}
    removals = set(changes.extra)
    for rel in changes.changed:
        live_type = _lexists_type(join(live, rel))
        if live_type != ref_types[rel]:
            removals.add(rel)
    # an entry below a removed directory goes with it
    pruned = [r for r in removals if not any(a in removals for a in with_ancestors(r)[:-1])]
    work = [("remove", r) for r in sorted(pruned, key=lambda r: (-r.count("/"), r))]
    create = sorted(set(changes.changed) | set(changes.missing), key=lambda r: (r.count("/"), r))
    work.extend(("put", r) for r in create)
    return work


def _lexists_type(
    path: Path, stats: dict[str, os.stat_result] | None = None, rel: str = ""
) -> str | None:
    """The type of the entry at `path`, None when there is none; its lstat is kept in
    `stats` under `rel` when given."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stats is not None:
        stats[rel] = st
    return entry_type(st)


def _is_dir(path: Path) -> bool:
    """True when `path` is a directory (not a link to one); False when it cannot be
    seen (as os.path.isdir)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _apply(action: str, rel: str, live: Path, reference: Path, state: _RestoreState) -> None:
    _refuse_links_within(live, rel, state.no_links)
    target = join(live, rel)
    if action == "remove":
        if os.path.lexists(target):
            remove_entry(target)
        _parent_touched(rel, state)
        return
    source = join(reference, rel)
    st = state.ref_stats.pop(rel, None) or os.lstat(source)
    if stat.S_ISDIR(st.st_mode):
        if not _is_dir(target):
            if os.path.lexists(target):
                remove_entry(target)
            os.mkdir(target, 0o700)
            _parent_touched(rel, state)
        state.dirs_to_fix.add(rel)
        return
    tmp = _temp_name(target)
    want = expect(rel, source, st)
    state.put.append(want)
    key = (st.st_dev, st.st_ino)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in state.linked:
        os.link(state.linked[key], tmp)
    else:
        if state.disposable:
            parent = rel.rpartition("/")[0]
            state.dir_stats.setdefault(parent, os.lstat(join(reference, parent)))
        state.data_written |= _build(source, tmp, st, state.disposable, want.want.xattrs)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            state.linked[key] = tmp
    state.renames.append((tmp, target))
    _parent_touched(rel, state)


def _temp_name(target: Path) -> Path:
    """The temp name `target` is built under, beside it: the same in every attempt,
    so one a crash left (a batch built, not yet renamed) is replaced, not left over."""
    digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()
    tmp = target.with_name(f"{TMP_PREFIX}{digest}")
    if os.path.lexists(tmp):
        remove_entry(tmp)
    return tmp


def _build(source: Path, tmp: Path, st: os.stat_result, disposable: bool, xattrs: Xattrs) -> bool:
    """Make `tmp` an exact copy of the non-directory `source` (stat `st`, extended
    attributes `xattrs`), not yet durable: moved there from a disposable reference on
    the same filesystem. Return True when file data may not be on disk yet (a copy, or
    a move of extracted data)."""
    if disposable:
        try:
            os.rename(source, tmp)
            return True
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    return materialize(source, tmp, st, durable=False, xattrs=xattrs)


def _parent_touched(rel: str, state: _RestoreState) -> None:
    """Remember that the directory holding `rel` needs its times put back."""
    if rel:
        state.dirs_to_fix.add(rel.rpartition("/")[0])


def _put_in_place(live: Path, state: _RestoreState) -> None:
    """Make the entries a batch built durable and rename each into place (the caller
    makes the renames durable): a syncfs of the filesystem instead of an fsync per
    file, and still every entry is either old or new after a crash (nothing is
    renamed into place before all it holds is on disk). The sync is left out when
    the batch wrote no file data (reflinks and metadata alone): the filesystem's
    journal then commits each entry no later than the rename that names it."""
    if state.data_written:
        _sync(live)
        state.data_written = False
    placed = {}
    for tmp, target in state.renames:
        if _is_dir(target):
            remove_entry(target)
        os.rename(tmp, target)
        placed[tmp] = target
    state.renames.clear()
    state.linked = {key: placed.get(path, path) for key, path in state.linked.items()}


def _sync(live: Path) -> None:
    """syncfs of the filesystem `live` is on (its parent's while it does not exist)."""
    syncfs(live if os.path.lexists(live) else live.parent)


def _sync_checking(live: Path, checks: list[Check]) -> None:
    """`_sync(live)`, running `checks` (of entries already in place, which the sync
    does not change) meanwhile: the sync waits on the disk, the checks mostly on the
    CPU (one after the other where no thread can start). Returns once both are done;
    raises what a check raised, else what the sync raised."""
    failed: list[OSError] = []

    def sync() -> None:
        try:
            _sync(live)
        except OSError as exc:
            failed.append(exc)

    syncing = threading.Thread(target=sync, name="hs-tx-syncfs")
    try:
        syncing.start()
        started = True
    except RuntimeError:  # no thread starts while children land in the audit's pid namespace
        started = False
        sync()
    try:
        for check in checks:
            check()
    finally:
        if started:
            syncing.join()
    if failed:
        raise failed[0]
