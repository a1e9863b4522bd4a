"""Manifests: what a tree looked like when it was snapshotted, and how it differs now.

A *manifest* records, for every entry under a scope path, its type, inode and
ctime. ctime cannot be set from user space: any write, chmod, chown, xattr
change, link or rename of an entry moves it. So an entry whose inode and
ctime still match was not touched, whatever its size and mtime say. Entries
whose ctime was within `CTIME_MARGIN_NS` of the manifest (a later change could
fall on the same clock tick) also get a full fingerprint (content and all
metadata) and are compared by that instead.

A *lazy* manifest records no entries: the read-only btrfs snapshot it stands for
already holds every one, and btrfs itself lists what changed (snapshot.changelist),
so taking it reads nothing of the tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import DamagedError, ScopeError
from .entries import entry_type, fingerprint, join, walk, with_ancestors

CTIME_MARGIN_NS = 200_000_000
# the fingerprint of a lazy manifest: the tree as its snapshot holds it (see snapshot_fingerprint)
IN_SNAPSHOT = "in-snapshot"
Entry = tuple[str, int, int, str | None, int]  # type, inode, ctime_ns, fingerprint, links


@dataclass
class Manifest:
    """What a tree looked like when it was snapshotted (see module docstring)."""

    taken_ns: int
    entries: dict[str, Entry] = field(default_factory=dict)  # by relative path
    lazy: bool = False  # no entries: the snapshot holds them (see module docstring)

    def to_bytes(self) -> bytes:
        """Serialise to JSON bytes (names kept exact through surrogate escapes)."""
        doc: dict[str, object] = {"taken_ns": self.taken_ns}
        doc["entries"] = [[k, *v] for k, v in self.entries.items()]
        if self.lazy:
            doc["lazy"] = True
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse what `to_bytes` wrote."""
        doc = json.loads(data)
        entries = {e[0]: (e[1], e[2], e[3], e[4], e[5]) for e in doc["entries"]}
        return cls(doc["taken_ns"], entries, bool(doc.get("lazy", False)))


def build_manifest(root: Path, taken_ns: int | None = None) -> Manifest:
    """Walk `root` and record every entry; refuse sockets (tar cannot keep them)."""
    taken = time.time_ns() if taken_ns is None else taken_ns
    manifest = Manifest(taken)
    for rel, st in walk(root):
        kind = entry_type(st)
        if kind == "s":
            raise ScopeError(
                f"{join(root, rel)} is a socket, which a snapshot cannot keep",
                "move the socket out of the path or leave the path out of backup_paths",
            )
        fp = None
        if st.st_ctime_ns >= taken - CTIME_MARGIN_NS:
            fp = fingerprint(join(root, rel), st)
        manifest.entries[rel] = (kind, st.st_ino, st.st_ctime_ns, fp, st.st_nlink)
    return manifest


def tree_fingerprint(root: Path) -> str:
    """A digest of which entries exist under `root` with which inode and ctime: it
    changes whenever anything under `root` is written, renamed, chmod-ed, ..."""
    if not os.path.lexists(root):
        return "absent"
    return _fingerprint((rel, entry_type(st), st.st_ino, st.st_ctime_ns) for rel, st in walk(root))


def manifest_fingerprint(manifest: Manifest | None) -> str:
    """What tree_fingerprint said of the tree when `manifest` was taken (IN_SNAPSHOT for a
    lazy one, which did not read the tree)."""
    if manifest is None:
        return "absent"
    if manifest.lazy:
        return IN_SNAPSHOT
    return _fingerprint((rel, e[0], e[1], e[2]) for rel, e in manifest.entries.items())


def _fingerprint(entries: Iterable[tuple[str, str, int, int]]) -> str:
    h = hashlib.sha256()
    for rel, kind, ino, ctime_ns in entries:
        h.update(f"{rel}\0{kind}\0{ino}\0{ctime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass
class Changes:
    """How a live tree differs from its manifest."""

    changed: list[str] = field(default_factory=list)  # in both, but touched
    extra: list[str] = field(default_factory=list)  # only live
    missing: list[str] = field(default_factory=list)  # only in the manifest

    def __bool__(self) -> bool:
        return bool(self.changed or self.extra or self.missing)

    @property
    def count(self) -> int:
        """How many entries differ."""
        return len(self.changed) + len(self.extra) + len(self.missing)

    def under(self, rel: str) -> Changes:
        """Only the differences at or below the entry `rel` ('' keeps everything)."""
        return self.where(lambda r: not rel or r == rel or r.startswith(rel + "/"))

    def where(self, keep: Callable[[str], bool]) -> Changes:
        """Only the differences whose relative path `keep` accepts."""

        def kept(rels: list[str]) -> list[str]:
            return [r for r in rels if keep(r)]

        return Changes(kept(self.changed), kept(self.extra), kept(self.missing))


def diff(live: Path, manifest: Manifest | None) -> Changes:
    """Compare the live tree at `live` with `manifest` (None: the path was absent)."""
    changes = Changes()
    if manifest is None:
        if os.path.lexists(live):
            changes.extra.append("")
        return changes
    if not os.path.lexists(live):
        changes.missing.extend(manifest.entries)  # the whole tree is gone
        return changes
    recorded_at, found = manifest.entries.get, []
    for rel, st in walk(live):
        recorded = recorded_at(rel)
        if recorded is None:
            changes.extra.append(rel)
            continue
        found.append(rel)
        kind, ino, ctime_ns, fp, _nlink = recorded
        if entry_type(st) != kind:
            changes.changed.append(rel)
        elif fp is not None:  # the path is built only here: for every entry it costs a third
            if fingerprint(join(live, rel), st) != fp:
                changes.changed.append(rel)
        elif st.st_ino != ino or st.st_ctime_ns != ctime_ns:
            changes.changed.append(rel)
    if len(found) < len(manifest.entries):  # something is gone
        seen = set(found)
        changes.missing.extend(rel for rel in manifest.entries if rel not in seen)
    return changes


def needed_entries(changes: Changes, manifest: Manifest) -> list[str] | None:
    """The entries a restore of `changes` reads from the reference, or None for all.

    That is every changed or missing entry with its ancestors, and the parent
    (with ancestors) of every entry the restore touches, whose times it puts
    back. None when a file to restore had hard links: its peers are needed too.
    """
    wanted = {""}
    for rel in (*changes.changed, *changes.missing):
        recorded = manifest.entries.get(rel)
        if recorded is not None and recorded[0] == "f" and recorded[4] > 1:
            return None
        wanted.update(with_ancestors(rel))
    for rel in (*changes.changed, *changes.missing, *changes.extra):
        wanted.update(with_ancestors(rel.rpartition("/")[0]))
    # a new directory's parents may be new as well: the snapshot has only the old ones
    kept = (rel for rel in wanted if rel in manifest.entries)
    return sorted(kept, key=lambda r: (r.count("/"), r))


def check_reference(reference: Path, manifest: Manifest, rels: list[str] | None) -> None:
    """Check that the snapshot tree `reference` holds, at every entry `rels` (None: all)
    a restore reads, an entry of the type the manifest recorded, reached without a
    link: a snapshot that is not what hs-tx took is never restored from.

    Raises DamagedError naming the first entry that differs.
    """
    for rel in manifest.entries if rels is None else rels:
        kind = manifest.entries[rel][0] if rel in manifest.entries else None
        try:
            found = entry_type(os.lstat(join(reference, rel)))
            through_link = any(
                os.path.islink(join(reference, up)) for up in with_ancestors(rel)[:-1] if up
            )
        except OSError:
            found, through_link = None, False
        if kind is not None and (found != kind or through_link):
            raise DamagedError(
                f"the snapshot at {reference} does not hold what its manifest recorded at"
                f" {rel or '.'!r} (a {kind!r} entry; found {found!r}"
                + (", through a link)" if through_link else ")"),
                "the snapshot was damaged or replaced; restore that path by hand",
            )
