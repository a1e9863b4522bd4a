"""A tar archive's index: what lets a restore verify and read only the members it needs.

Beside each archive `<n>.tar` lies `<n>.tar.index`, a text file an operator can
read: a first line `hs-tx tar index 1 CHUNK`; for an incremental archive (see
snapshot.tardiff) a line `base CHECKSUM PATH` naming the full archive it completes and
that archive's recorded checksum; then the SHA-256 of every CHUNK bytes of the archive
in order (one hex digest a line), a line `members`, then GNU tar's own list of where
each member starts (`block N: NAME`, as `tar --create --verbose --block-number
--index-file` writes it). The journal records `index:` and the SHA-256 of that file
as the archive's checksum, so checking the index and then every chunk checks the
whole archive (and which base it needs), and a restore of a few members checks only
the chunks that hold them and hands tar only those checked bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..base.fsio import durable_write
from .entries import unescape

CHUNK = 1 << 16
PREFIX = "index:"  # the journal's checksum of an archive that has an index
_MAGIC = "hs-tx tar index 1"
_BASE = "base "
_BLOCK = 512
_MEMBER_LINE = re.compile(r"^block ([0-9]+): (.*)$", re.MULTILINE)


def index_path(archive: Path) -> Path:
    """Where the index of `archive` lies."""
    return archive.with_name(archive.name + ".index")


class ChunkSums:
    """The SHA-256 of every CHUNK bytes of an archive, as it is written in pieces of
    any size (`update`)."""

    def __init__(self) -> None:
        self.sums: list[str] = []
        self._hash = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes) -> None:
        """Take the next bytes of the archive."""
        view = memoryview(data)
        while view:
            take = min(CHUNK - self._filled, len(view))
            self._hash.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == CHUNK:
                self.sums.append(self._hash.hexdigest())
                self._hash, self._filled = hashlib.sha256(), 0

    def digests(self) -> list[str]:
        """The digest of every chunk so far, a last partial one included."""
        return self.sums + ([self._hash.hexdigest()] if self._filled else [])


def write_index(
    sums: list[str], listing: Path, dest: Path, base: tuple[str, str] | None = None
) -> str:
    """Given the chunk digests of an archive (see ChunkSums), the list tar wrote of it
    (`--index-file`) and, for an incremental archive, the (checksum, path) of its base,
    write the index to `dest` durably and return the checksum to record for the
    archive. Raises OSError."""
    head = f"{_MAGIC} {CHUNK}\n"
    if base is not None:
        head += f"{_BASE}{base[0]} {base[1]}\n"
    head += "".join(f"{s}\n" for s in sums) + "members\n"
    data = head.encode() + listing.read_bytes()
    durable_write(dest, data, 0o600)
    return PREFIX + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Index:
    """A checked index: the chunk digests and where each member starts (its first
    block, extended headers included), members in archive order."""

    sums: list[str]
    starts: dict[str, int]
    order: list[int]
    base: tuple[str, str] | None = None  # an incremental archive's: (checksum, path)
    dirs: frozenset[str] = frozenset()  # the members that are directories

    def spans(self, names: list[str], size: int) -> list[tuple[int, int]] | None:
        """The byte ranges [start, end) of the members `names` (dirs without their
        trailing slash) in an archive of `size` bytes, in archive order; None when one
        is not in the index."""
        starts = [self.starts.get(name) for name in names]
        if any(s is None for s in starts):
            return None
        following = dict(zip(self.order, [*self.order[1:], size], strict=True))
        return sorted({(s, following[s]) for s in starts if s is not None})


def read_index(archive: Path, checksum: str) -> Index | None:
    """The index of `archive`, when its file is there with the checksum the journal
    recorded (`index:...`) and well formed; else None (the caller then checks and
    reads the whole archive, and reports what fails). Raises OSError."""
    try:
        data = index_path(archive).read_bytes()
    except FileNotFoundError:
        return None
    if PREFIX + hashlib.sha256(data).hexdigest() != checksum:
        return None
    head, sep, listing = data.partition(b"\nmembers\n")
    lines = head.decode("utf-8", "surrogateescape").split("\n")
    if not sep or lines[0] != f"{_MAGIC} {CHUNK}":
        return None
    base = _base_line(lines[1]) if len(lines) > 1 else None
    members = list(_members(listing.decode("utf-8", "surrogateescape")))
    starts = {name: offset for name, offset, _is_dir in members}
    dirs = frozenset(name for name, _offset, is_dir in members if is_dir)
    return Index(lines[2 if base else 1 :], starts, sorted(starts.values()), base, dirs)


def index_matches(archive: Path, checksum: str) -> bool:
    """True when the index of `archive` is there with the checksum the journal recorded
    (`index:...`), read no further. Raises OSError when it cannot be read."""
    try:
        data = index_path(archive).read_bytes()
    except FileNotFoundError:
        return False
    return PREFIX + hashlib.sha256(data).hexdigest() == checksum


def base_of(archive: Path) -> str | None:
    """The path of the base archive the index of `archive` names (unchecked: for
    knowing which archives are still needed), or None for a full archive or none."""
    try:
        with open(index_path(archive), "rb") as f:
            f.readline()
            second = f.readline(1 << 16).decode("utf-8", "surrogateescape").rstrip("\n")
    except OSError:
        return None
    base = _base_line(second)
    return base[1] if base else None


def _base_line(line: str) -> tuple[str, str] | None:
    """(checksum, path) of a `base CHECKSUM PATH` line, or None."""
    if not line.startswith(_BASE):
        return None
    checksum, _, path = line[len(_BASE) :].partition(" ")
    return (checksum, path) if checksum and path else None


def _members(listing: str) -> Iterator[tuple[str, int, bool]]:
    """(name without a trailing slash, byte offset, whether it is a directory) of each
    `block N: NAME` line (tar lists a directory with a trailing slash)."""
    escaped = "\\" in listing  # most listings escape no name: none is unescaped then
    for block, name in _MEMBER_LINE.findall(listing):
        if escaped:
            name = unescape(name)
        if name.endswith("/"):
            yield name.rstrip("/"), int(block) * _BLOCK, True
        else:
            yield name, int(block) * _BLOCK, False


def whole_ok(archive: Path, index: Index) -> bool:
    """True when every chunk of `archive` has the digest the index holds."""
    with open(archive, "rb") as f:
        return [hashlib.sha256(chunk).hexdigest() for chunk in _chunks(f, 0, None)] == index.sums


def write_subset(archive: Path, index: Index, spans: list[tuple[int, int]], dest: Path) -> bool:
    """Write to `dest` a tar archive of the bytes `spans` of `archive` (whole members)
    and an end-of-archive marker, checking each chunk read against the index first.
    Return False, leaving `dest` incomplete, when a chunk fails. Raises OSError."""
    with open(archive, "rb") as src, open(dest, "wb") as out:
        for start, end in spans:
            first = start - start % CHUNK
            for n, chunk in enumerate(_chunks(src, first, end), first // CHUNK):
                if n >= len(index.sums) or hashlib.sha256(chunk).hexdigest() != index.sums[n]:
                    return False
                offset = n * CHUNK
                out.write(chunk[max(0, start - offset) : end - offset])
        out.write(bytes(2 * _BLOCK))
    return True


def _chunks(f: IO[bytes], start: int, end: int | None) -> Iterator[bytes]:
    """The CHUNK-sized pieces of the open file `f` from `start` (a multiple of CHUNK)
    on, up to the one holding byte `end - 1` (None: to its end)."""
    f.seek(start)
    offset = start
    while end is None or offset < end:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        yield chunk
        offset += len(chunk)
