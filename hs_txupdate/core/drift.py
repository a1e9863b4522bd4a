"""Fingerprints of the state hs-tx left a path in, so an undo notices a change made
outside hs-tx since: recorded at a commit (and after a rollback), compared with now.

Three kinds, told apart by their prefix:
- none: every entry of the path (`tree_fingerprint`): a path without a btrfs
  snapshot, or one that did not exist before;
- `rels:`: a system entry: the entries its run changed (another process's writes
  elsewhere in the system are not drift: the undo puts back only those entries);
- `diff:TX:`: a path with a btrfs snapshot in transaction TX: what btrfs lists as
  changed since that snapshot, each entry with its state. It reads what changed,
  never the whole tree: any other change made since shows as one more listed entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..audit.fold import name_key
from ..base.errors import DamagedError
from ..base.proc import CommandError
from ..journal import Journal, PathInfo, TxInfo
from ..snapshot.btrfs import BtrfsBackend
from ..snapshot.manifest import IN_SNAPSHOT, Changes, tree_fingerprint
from .snapshots import captured_of, path_changes, snapshot_fingerprint, target_of
from .system import Mark, changes_in, listed_changes

RELS = "rels:"
DIFF = "diff:"


def fingerprint_of(top: Path, marks: dict[str, Mark]) -> str:
    """A system entry's fingerprint: a digest of the marked entries of `top` as they are
    now (see `_digest`)."""
    return RELS + _digest(top, marks)


def left_fingerprint(tx_id: int, info: PathInfo, changes: Changes) -> str:
    """Given a non-system scope path `info` of transaction `tx_id` about to commit and
    how it differs from its snapshot, return the fingerprint of the state left: of the
    changed entries alone when btrfs lists them (a lazy manifest), else of the tree."""
    if info.fingerprint_before != IN_SNAPSHOT:
        return tree_fingerprint(Path(info.path))
    return _diff_fingerprint(tx_id, Path(info.path), changes)


def fingerprint_now(
    journal: Journal, infos: dict[int, TxInfo], tx: int, path: str, recorded: str
) -> str | None:
    """Given the fingerprint `recorded` for `path` by transaction `tx` (in `infos`, or
    read), return the fingerprint of `path` now taken the same way, or None when it
    cannot be taken (the btrfs snapshot it is read against is gone or not the one
    recorded). Raises CommandError, OSError."""
    if recorded.startswith(RELS):
        info = infos[tx]
        scope_path = next(p for p in info.paths if p.path == path)
        return fingerprint_of(Path(path), changes_in(info, scope_path))
    if not recorded.startswith(DIFF):
        return tree_fingerprint(Path(path))
    base = _base_path(journal, recorded, path)
    if base is None:
        return None
    try:
        return _diff_now(journal, base)
    except DamagedError:
        return None


def restored_fingerprint(journal: Journal, info: PathInfo, last: str) -> str | None:
    """Given scope path `info` of a transaction just rolled back (its snapshot still
    there) and the fingerprint `last` of the state hs-tx last left the path in: when
    the snapshot shows that state (nothing changed outside hs-tx before this run),
    return the fingerprint of the path as restored, taken as `last` was; else None
    (also when a snapshot needed is gone: a later undo then asks for --force).
    Raises CommandError, DamagedError (tree fingerprints), OSError."""
    if not last.startswith(DIFF):
        if snapshot_fingerprint(journal, info) != last:
            return None
        return tree_fingerprint(Path(info.path))
    base = _base_path(journal, last, info.path)
    if base is None or info.fingerprint_before != IN_SNAPSHOT or _rel(base[1]) != _rel(info):
        return None
    target, backend = target_of(journal, 0, info.n, Path(info.path)), BtrfsBackend()
    try:
        since = backend.changes_between(target, captured_of(base[1]), captured_of(info))
        # the snapshots were checked: the tree as this run's snapshot holds it
        tree = backend.manifest_root(target, captured_of(info))
        if _diff_fingerprint(base[0], tree, since) != last:
            return None
        return _diff_now(journal, base)
    except (DamagedError, CommandError):
        return None


def _base_path(journal: Journal, fingerprint: str, path: str) -> tuple[int, PathInfo] | None:
    """(the transaction a `diff:TX:` fingerprint is read against, its scope path `path`)
    while that path existed and its snapshots are kept; else None."""
    tx = int(fingerprint.split(":")[1])
    info = journal.transaction(tx)
    if info is None or info.snapshots_pruned_at is not None:
        return None
    found = next((p for p in info.paths if p.path == path and p.existed), None)
    return None if found is None else (tx, found)


def _diff_now(journal: Journal, base: tuple[int, PathInfo]) -> str:
    """The `diff:` fingerprint of the live path against the base snapshot `base`.
    Raises CommandError, DamagedError, OSError."""
    tx, info = base
    return _diff_fingerprint(tx, Path(info.path), path_changes(journal, info))


def _rel(info: PathInfo) -> str | None:
    """Where in its subvolume a btrfs snapshot of `info` holds it."""
    rel = json.loads(info.snapshot or "{}").get("rel")
    return rel if isinstance(rel, str) else None


def _diff_fingerprint(tx: int, top: Path, changes: Changes) -> str:
    """`diff:TX:` and the digest of the entries `changes` lists, read under `top`: one
    created or deleted, with all below it; else the entry alone."""
    listed = listed_changes(changes, lambda _rel: True)
    return f"{DIFF}{tx}:" + _digest(top, {c.path: c.change != "modified" for c in listed})


def _digest(top: Path, marks: dict[str, Mark]) -> str:
    """A digest of the marked entries of `top` as they are now (what lies below those
    marked whole included; of a directory marked by names, those entries alone): it
    reads only those, and changes when one of them is written, renamed, chmod-ed, ..."""
    digest = hashlib.sha256()
    for rel in sorted(marks):
        path, mark = top / rel if rel else top, marks[rel]
        if isinstance(mark, frozenset):
            state = _named_state(path, mark)
        else:
            state = tree_fingerprint(path) if mark else _entry_state(path)
        digest.update(f"{rel}\0{state}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _named_state(directory: Path, keys: frozenset[int]) -> str:
    """The state of the entries of `directory` whose name keys are `keys` (another
    process's entries there, and the directory's own times, left out)."""
    try:
        names = sorted(n for n in os.listdir(directory) if name_key(n) in keys)
    except FileNotFoundError:
        return "absent"
    return "\0".join(f"{n}:{tree_fingerprint(directory / n)}" for n in names)


def _entry_state(path: Path) -> str:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    return f"{st.st_mode}:{st.st_ino}:{st.st_ctime_ns}"
