"""Aggregation and classification of changed paths, pure (no kernel, no I/O of
its own): what the reader keeps per path, how many entries fold into a directory,
and what each path amounts to against the live filesystem at the end."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .events import (
    APPEARED,
    DIRENT,
    FAN_ATTRIB,
    FAN_CREATE,
    FAN_DELETE,
    FAN_MODIFY,
    FAN_MOVED_TO,
    FAN_ONDIR,
    VANISHED,
)
from .paths import parent_and_name, rebase, under

FOLD_AT = 32  # more changed entries than this directly in one directory (per module) fold


def name_key(name: str) -> int:
    """A stable 63-bit key of an entry's name (the same in every process, unlike
    hash()): what a fold keeps of each name it takes in."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


CREATED, MODIFIED, METADATA, DELETED = "created", "modified", "metadata", "deleted"
_STRENGTH = {CREATED: 0, DELETED: 1, MODIFIED: 2, METADATA: 3}


@dataclass(frozen=True)
class Change:
    """One net change of the run: an absolute `path`, what happened to it
    ("created" | "modified" | "metadata" | "deleted"), the module that made it
    (None: the run itself, between modules) and how many entries it stands for."""

    path: str
    change: str
    module: str | None
    count: int = 1
    names: tuple[int, ...] = ()  # a fold: the name keys of the entries it stands for


@dataclass(slots=True)
class Entry:
    """What is known of one path: the mask of its first event, every kind seen,
    the module of its first event, and how many entries folded into it."""

    first: int
    union: int
    module: str | None
    count: int = 1


Key = tuple[str, str | None]  # (directory, module)


class Aggregator:
    """Bounded per-path aggregation of events.

    Paths below a directory the run created are not stored (the directory
    stands for them). More than `fold_at` entries changed by one module directly
    in one directory fold into the directory. `exists` tells whether a path is
    there now; it lets a fold drop names that came and went (temp files).
    """

    def __init__(self, exists: Callable[[str], bool], fold_at: int = FOLD_AT) -> None:
        self.entries: dict[str, Entry] = {}
        self.new_dirs: set[str] = set()
        self.kids: dict[Key, set[str]] = {}
        self.folds: dict[Key, set[int]] = {}
        self._exists = exists
        self._fold_at = fold_at

    def add(self, path: str, mask: int, module: str | None) -> None:
        """Record one event of kind `mask` on `path` by `module`."""
        if self.new_dirs and self.in_new_dir(path):
            return
        entry = self.entries.get(path)
        if entry is not None:
            entry.union |= mask
            return
        if mask & FAN_CREATE and mask & FAN_ONDIR:
            self.new_dirs.add(path)
        parent, name = parent_and_name(path)
        key = (parent, module)
        folded = self.folds.get(key)
        if folded is not None:
            folded.add(name_key(name))
            return
        self.entries[path] = Entry(mask, mask, module)
        kids = self.kids.setdefault(key, set())
        kids.add(name)
        if len(kids) > self._fold_at:
            self._fold(key, kids)

    def replaced(self, path: str) -> None:
        """The name `path` was moved onto an existing file: if that was its first
        event, the path was there before, so it counts as modified, not created."""
        entry = self.entries.get(path)
        if entry is not None and entry.first & FAN_MOVED_TO and not entry.first & FAN_CREATE:
            entry.first = FAN_MODIFY

    def add_count(self, path: str, count: int, module: str | None) -> None:
        """Fold `count` entries (events in a directory deleted before it could be
        named) into `path`, recording `path` as deleted when nothing is known of it."""
        if count <= 0 or (self.new_dirs and self.in_new_dir(path)):
            return
        entry = self.entries.get(path)
        if entry is None:
            self.add(path, FAN_DELETE | FAN_ONDIR, module)
            entry = self.entries.get(path)
        if entry is not None:
            entry.count += count

    def in_new_dir(self, path: str) -> bool:
        """True when `path` lies below a directory this run created."""
        cut = path.rfind("/")
        while cut > 0:
            path = path[:cut]
            if path in self.new_dirs:
                return True
            cut = path.rfind("/")
        return False

    def _fold(self, key: Key, kids: set[str]) -> None:
        """Fold the entries of `key` into their directory, first dropping those
        that came and went (created, seen going, gone now)."""
        parent = key[0]
        for name in list(kids):
            path = f"{parent.rstrip('/')}/{name}"
            entry = self.entries.get(path)
            if entry is not None and _came_and_went(entry) and not self._exists(path):
                del self.entries[path]
                kids.discard(name)
        if len(kids) <= self._fold_at:
            return
        for name in kids:
            self.entries.pop(f"{parent.rstrip('/')}/{name}", None)
        del self.kids[key]
        self.folds[key] = {name_key(name) for name in kids}

    def rename(self, old: str, new: str) -> None:
        """A directory moved from `old` to `new`: what is stored below `old` moves
        below `new` (or folds away when `new` lies in a directory the run created)."""
        if old in self.new_dirs:
            self.new_dirs.discard(old)
            if not self.in_new_dir(new):
                self.new_dirs.add(new)
            return
        if old == new or self.in_new_dir(old):
            return
        drop = self.in_new_dir(new)
        self.entries = _moved(self.entries, old, new, drop, lambda p: p)
        self.kids = _moved(self.kids, old, new, drop, lambda k: k[0])
        self.folds = _moved(self.folds, old, new, drop, lambda k: k[0])
        self.new_dirs = {
            rebase(d, old, new) if under(d, old) and d != old else d for d in self.new_dirs
        }

    def export(self) -> dict[str, Any]:
        """Return the aggregate as JSON-able data (see `classify`)."""
        return {
            "entries": [[p, e.first, e.union, e.module, e.count] for p, e in self.entries.items()],
            "new_dirs": sorted(d for d in self.new_dirs if d in self.entries),
            "folds": [[d, m, sorted(h)] for (d, m), h in self.folds.items()],
        }


def _came_and_went(entry: Entry) -> bool:
    """True when the entry's first event created it and a later one removed it."""
    return bool(entry.first & APPEARED and entry.union & VANISHED)


def _moved(table: dict[Any, Any], old: str, new: str, drop: bool, path_of: Any) -> dict[Any, Any]:
    """Return `table` with keys whose path lies strictly below `old` rebased below
    `new` (or left out when `drop`). Keys are paths or (path, module)."""
    out: dict[Any, Any] = {}
    prefix = old.rstrip("/") + "/"
    for key, value in table.items():
        path = path_of(key)
        if not path.startswith(prefix):
            out.setdefault(key, value)
            continue
        if drop:
            continue
        moved = rebase(path, old, new)
        out[moved if isinstance(key, str) else (moved, key[1])] = value
    return out


def kind_of(first: int, union: int, exists: bool) -> str | None:
    """Classify one path: its first event mask, all kinds seen, whether it exists
    now. Returns the change, or None when it came and went (no net change)."""
    if first & APPEARED:
        return CREATED if exists else None
    if not exists:
        return DELETED
    if union & (FAN_MODIFY | DIRENT):
        return MODIFIED
    if union & FAN_ATTRIB:
        return METADATA
    return MODIFIED


def classify(
    aggregate: dict[str, Any],
    exists: Callable[[str], bool],
    count_below: Callable[[str], int],
) -> list[Change]:
    """Turn an exported aggregate into net changes, sorted by path.

    `exists(path)` tells whether a path is there now (lstat); `count_below(dir)`
    how many entries a created directory holds now. Paths below a deleted
    directory fold into it; a path listed twice for one module is merged.
    """
    new_dirs = set(aggregate.get("new_dirs", ()))
    changes: list[Change] = []
    for path, first, union, module, count in aggregate.get("entries", ()):
        there = exists(path)
        kind = kind_of(first, union, there)
        if kind is None:
            continue
        if kind == CREATED and path in new_dirs:
            count += count_below(path)
        changes.append(Change(path, kind, module, count))
    for directory, module, names in aggregate.get("folds", ()):
        kind = MODIFIED if exists(directory) else DELETED
        changes.append(Change(directory, kind, module, len(names), tuple(names)))
    return _merge(fold_deleted(changes))


def fold_deleted(changes: Iterable[Change]) -> list[Change]:
    """Fold every change below a deleted directory into the topmost such directory."""
    changes = sorted(changes, key=lambda c: c.path)
    deleted = {c.path for c in changes if c.change == DELETED}
    extra: dict[str, int] = {}
    kept: list[Change] = []
    for change in changes:
        top = _topmost(change.path, deleted)
        if top is None:
            kept.append(change)
        else:
            extra[top] = extra.get(top, 0) + change.count
    return [
        Change(c.path, c.change, c.module, c.count + extra.pop(c.path, 0))  # whole: no names
        if c.change == DELETED
        else c
        for c in kept
    ]


def _topmost(path: str, dirs: set[str]) -> str | None:
    """The topmost of `dirs` strictly above `path`, or None."""
    found = None
    cut = path.rfind("/")
    while cut > 0:
        path = path[:cut]
        if path in dirs:
            found = path
        cut = path.rfind("/")
    return found


def _merge(changes: list[Change]) -> list[Change]:
    """Merge changes of the same path and module (an entry and a fold): the
    stronger kind wins, counts add up. Keeps the order (sorted by path)."""
    out: dict[tuple[str, str | None], Change] = {}
    for c in changes:
        seen = out.get((c.path, c.module))
        if seen is not None:
            kind = min(seen.change, c.change, key=_STRENGTH.__getitem__)
            names = tuple(sorted({*seen.names, *c.names}))
            c = Change(c.path, kind, c.module, seen.count + c.count, names)
        out[(c.path, c.module)] = c
    return sorted(out.values(), key=lambda c: (c.path, c.module or ""))
