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

A manifest file (`write_manifest`) is a text file, one entry a line in the order
the walk meets them (a directory before what it holds, siblings in name order):
a first line `hs-tx manifest 2 TAKEN_NS`, then `TYPE INODE CTIME_NS LINKS
FINGERPRINT NAME` (FINGERPRINT `-` for none; NAME last, with a backslash and a
newline escaped as `\\` and `\n`). It is written and read a piece at a time and
compared with the tree by walking both in that order, so no tree is ever held in
memory whole; its SHA-256, recorded in the journal, is checked as it is read.
Manifests of earlier versions (one JSON document) are still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..base.errors import DamagedError, ScopeError
from ..base.fsio import durable_write
from .entries import entry_type, fingerprint, join, unescape, walk, with_ancestors

CTIME_MARGIN_NS = 200_000_000
# the fingerprint of a lazy manifest: the tree as its snapshot holds it (see snapshot_fingerprint)
IN_SNAPSHOT = "in-snapshot"
Entry = tuple[str, int, int, str | None, int]  # type, inode, ctime_ns, fingerprint, links
_MAGIC = b"hs-tx manifest 2 "
_PIECE = 1 << 20  # a manifest file is read and written in pieces of about this
T = TypeVar("T")


@dataclass
class Manifest:
    """What a tree looked like when it was snapshotted (see module docstring): its
    entries in memory, or in a manifest file read as they are needed."""

    taken_ns: int
    entries: dict[str, Entry] = field(default_factory=dict)  # by relative path
    lazy: bool = False  # no entries: the snapshot holds them (see module docstring)
    file: tuple[Path, str] | None = None  # the entries' manifest file and its SHA-256

    def items(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, Entry]]:
        """Every (relative path, entry), in walk order. From a file: read a piece at a
        time, raising DamagedError, once read through, when the file fails its
        checksum (a caller reads it through before it acts on what it read); only
        the lines from byte `start` to byte `stop` (None: the end; both where a line
        starts) are parsed, the whole file read and checked all the same."""
        if self.file is None:
            yield from self.entries.items()
            return
        path, sha256 = self.file
        digest, rest, at, head = hashlib.sha256(), b"", 0, True  # at: where `rest` starts
        try:
            with open(path, "rb") as f:
                while piece := f.read(_PIECE):
                    digest.update(piece)
                    rest += piece
                    cut = rest.rfind(b"\n") + 1  # whole lines, decoded at once
                    if not cut:
                        continue
                    lines, rest, at = rest[:cut], rest[cut:], at + cut
                    if head:  # the first line: read by read_manifest
                        lines, head = lines[lines.index(b"\n") + 1 :], False
                    lo = max(0, start - (at - len(lines)))
                    hi = len(lines) if stop is None else min(len(lines), stop - (at - len(lines)))
                    if lo < hi:
                        yield from _parsed(lines[lo:hi].decode(_ENC, _ERR), path)
        except OSError as exc:
            raise _damaged(path, f"is unreadable: {exc.strerror}") from exc
        if rest or digest.hexdigest() != sha256:
            raise _damaged(path, "fails its checksum")

    def to_bytes(self) -> bytes:
        """Serialise to JSON bytes (names kept exact through surrogate escapes): the
        format of a lazy manifest, kept in the journal, and of earlier versions."""
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


def read_manifest(path: Path, sha256: str) -> Manifest:
    """The manifest in the file `path`, whose recorded SHA-256 is `sha256`: one of
    this version is read as it is used (see Manifest.items), an earlier one whole.
    Raises DamagedError when it is unreadable, not a manifest, or (an earlier one)
    fails its checksum; OSError."""
    with open(path, "rb") as f:
        first = f.readline(256)
        if not first.startswith(_MAGIC):
            data = first + f.read()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise _damaged(path, "fails its checksum")
            return Manifest.from_bytes(data)
    taken = first[len(_MAGIC) :].rstrip(b"\n")
    if not taken.isdigit():
        raise _damaged(path, "is not a manifest")
    return Manifest(int(taken), file=(path, sha256))


def _parsed(text: str, path: Path) -> Iterator[tuple[str, Entry]]:
    """The entries of the whole manifest lines `text`. Raises DamagedError."""
    escaped = "\\" in text  # most manifests escape no name: none is unescaped then
    try:
        for line in text.split("\n")[:-1]:
            kind, ino, ctime, links, fp, name = line.split(" ", 5)
            entry = (kind, int(ino), int(ctime), None if fp == "-" else fp, int(links))
            yield unescape(name) if escaped else name, entry
    except ValueError as exc:
        raise _damaged(path, "is not a manifest") from exc


def _damaged(path: Path, what: str) -> DamagedError:
    return DamagedError(f"manifest {path} {what}", "restore the path by hand from its snapshot")


# what writing a manifest file returns: the manifest (read from its file when used), the
# file's SHA-256, and what manifest_fingerprint says of it
Written = tuple[Manifest, str, str]


def build_manifest(root: Path, taken_ns: int | None = None) -> Manifest:
    """Walk `root` and record every entry in memory; refuse sockets (tar cannot keep
    them). (A snapshot writes a manifest file instead: write_manifest.)"""
    taken = time.time_ns() if taken_ns is None else taken_ns
    return Manifest(taken, dict(_taken(root, taken)))


def write_manifest(root: Path, taken_ns: int, dest: Path) -> Written:
    """Walk `root` and write the manifest file `dest` durably, a piece at a time;
    refuse sockets. Return (the manifest, read from `dest` when used; its SHA-256;
    what manifest_fingerprint says of it). Raises ScopeError, OSError."""
    return write_entries(dest, taken_ns, _taken(root, taken_ns))


def write_entries(dest: Path, taken_ns: int, entries: Iterable[tuple[str, Entry]]) -> Written:
    """Write the manifest file `dest` of `entries` (in walk order, as `manifest_entry`
    makes them) durably, a piece at a time; return what write_manifest does. Raises
    what iterating `entries` raises, and OSError."""
    digest, tree = hashlib.sha256(), hashlib.sha256()

    def pieces() -> Iterator[bytes]:
        lines = [_MAGIC + b"%d\n" % taken_ns]
        for rel, (kind, ino, ctime, fp, links) in entries:
            name = rel.replace("\\", "\\\\").replace("\n", "\\n") if _escapes(rel) else rel
            lines.append(f"{kind} {ino} {ctime} {links} {fp or '-'} {name}\n".encode(_ENC, _ERR))
            tree.update(fingerprint_line(rel, kind, ino, ctime))
            if len(lines) >= 4096:
                yield _hashed(digest, lines)
        yield _hashed(digest, lines)

    durable_write(dest, pieces())
    sha256 = digest.hexdigest()
    return Manifest(taken_ns, file=(dest, sha256)), sha256, tree.hexdigest()


_ENC, _ERR = "utf-8", "surrogateescape"


def _escapes(rel: str) -> bool:
    return "\\" in rel or "\n" in rel


def _hashed(digest: hashlib._Hash, lines: list[bytes]) -> bytes:
    """The lines joined (and emptied), hashed into `digest`."""
    piece = b"".join(lines)
    lines.clear()
    digest.update(piece)
    return piece


def _taken(root: Path, taken: int) -> Iterator[tuple[str, Entry]]:
    """The entries of the tree `root` as a manifest taken at `taken` records them.
    Raises ScopeError at a socket."""
    for rel, st in walk(root):
        yield rel, manifest_entry(root, rel, st, taken)


def manifest_entry(root: Path, rel: str, st: os.stat_result, taken: int) -> Entry:
    """How a manifest taken at `taken` records entry `rel` of `root`, of lstat `st`
    (with a fingerprint when its ctime is too close to `taken` to trust). Raises
    ScopeError for a socket, which a snapshot cannot keep."""
    kind = entry_type(st)
    if kind == "s":
        raise ScopeError(
            f"{join(root, rel)} is a socket, which a snapshot cannot keep",
            "move the socket out of the path or leave the path out of backup_paths",
        )
    fp = None
    if st.st_ctime_ns >= taken - CTIME_MARGIN_NS:
        fp = fingerprint(join(root, rel), st)
    return kind, st.st_ino, st.st_ctime_ns, fp, st.st_nlink


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
    return _fingerprint((rel, e[0], e[1], e[2]) for rel, e in manifest.items())


def _fingerprint(entries: Iterable[tuple[str, str, int, int]]) -> str:
    h = hashlib.sha256()
    for entry in entries:
        h.update(fingerprint_line(*entry))
    return h.hexdigest()


def fingerprint_line(rel: str, kind: str, ino: int, ctime_ns: int) -> bytes:
    """One entry's share of `tree_fingerprint`."""
    return f"{rel}\0{kind}\0{ino}\0{ctime_ns}\n".encode(_ENC, _ERR)


@dataclass
class Changes:
    """How a live tree differs from its manifest."""

    changed: list[str] = field(default_factory=list)  # in both, but touched
    extra: list[str] = field(default_factory=list)  # only live
    missing: list[str] = field(default_factory=list)  # only in the manifest
    # what `diff` read of each entry it found differing: the manifest's type and link
    # count, None for an extra one (see needed_entries); kept whole by `where`
    recorded: dict[str, tuple[str, int] | None] = field(default_factory=dict)

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

        return Changes(kept(self.changed), kept(self.extra), kept(self.missing), self.recorded)


def aligned(
    live: Iterable[tuple[str, T]], recorded: Iterable[tuple[str, Entry]]
) -> Iterator[tuple[str, T | None, Entry | None]]:
    """(relative path, what `live` has of it, what `recorded` has) for every path of
    either, both given in walk order (see module docstring); None where one has not
    got it. Both are read through."""
    theirs = iter(recorded)
    other = next(theirs, None)
    for rel, mine in live:
        while other is not None and other[0] != rel and _walks_before(other[0], rel):
            yield other[0], None, other[1]
            other = next(theirs, None)
        if other is not None and other[0] == rel:
            yield rel, mine, other[1]
            other = next(theirs, None)
        else:
            yield rel, mine, None
    while other is not None:
        yield other[0], None, other[1]
        other = next(theirs, None)


def _walks_before(a: str, b: str) -> bool:
    """True when a walk meets entry `a` before `b`: names compared part by part."""
    return a.split("/") < b.split("/")


def needed_entries(changes: Changes) -> dict[str, str] | None:
    """Given `changes` as `diff` found them (perhaps narrowed by `under` or `where`),
    return the entries a restore of them reads from the reference, with the type the
    manifest recorded for each, parents first; or None for all.

    That is every changed or missing entry with its ancestors, and the parent
    (with ancestors) of every entry the restore touches, whose times it puts
    back. None when a file to restore had hard links: its peers are needed too.
    An entry the diff did not find differing is in both trees with one type: a
    directory, as it holds another entry.
    """
    touched = {*changes.changed, *changes.missing}
    wanted = {""}
    for rel in touched:
        wanted.update(with_ancestors(rel))
    for rel in (*changes.changed, *changes.missing, *changes.extra):
        wanted.update(with_ancestors(rel.rpartition("/")[0]))
    kinds = {}
    for rel in sorted(wanted, key=lambda r: (r.count("/"), r)):
        recorded = changes.recorded.get(rel, ("d", 1))
        if recorded is None:
            continue  # a new directory: the snapshot has only the old ones
        if rel in touched and recorded[0] == "f" and recorded[1] > 1:
            return None
        kinds[rel] = recorded[0]
    return kinds


def check_reference(reference: Path, manifest: Manifest, kinds: dict[str, str] | None) -> None:
    """Check that the snapshot tree `reference` holds, at every entry a restore reads
    (`kinds`, from needed_entries; None: all the manifest records), an entry of the
    type the manifest recorded, reached without a link: a snapshot that is not what
    hs-tx took is never restored from.

    Raises DamagedError naming the first entry that differs (or a manifest file
    failing its checksum).
    """
    wanted = kinds.items() if kinds is not None else ((r, e[0]) for r, e in manifest.items())
    for rel, kind in wanted:
        try:
            found = entry_type(os.lstat(join(reference, rel)))
            through_link = any(
                os.path.islink(join(reference, up)) for up in with_ancestors(rel)[:-1] if up
            )
        except OSError:
            found, through_link = None, False
        if found != kind or through_link:
            raise DamagedError(
                f"the snapshot at {reference} does not hold what its manifest recorded at"
                f" {rel or '.'!r} (a {kind!r} entry; found {found!r}"
                + (", through a link)" if through_link else ")"),
                "the snapshot was damaged or replaced; restore that path by hand",
            )
