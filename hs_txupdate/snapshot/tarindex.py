"""A tar archive's index: what lets a restore verify and read only the members it needs.

Beside each archive `<n>.tar` lies `<n>.tar.index`, a text file an operator can
read: a first line `hs-tx tar index 1 SIZE`, SIZE the bytes each digest covers (hs-tx
writes 32 KiB, and reads the 64 KiB of its earlier indexes); for an incremental
archive (see snapshot.tardiff) a line `base CHECKSUM PATH` naming the full archive it
completes and that archive's recorded checksum; then the SHA-256 of every SIZE bytes
of the archive in order (one hex digest a line), a line `members`, then GNU tar's own
list of where each member starts (`block N: NAME`, as `tar --create --verbose
--block-number --index-file` writes it). The journal records `index:` and the SHA-256 of that file
as the archive's checksum, so checking the index and then every chunk checks the
whole archive (and which base it needs), and a restore of a few members checks only
the chunks that hold them and hands tar only those checked bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..base.fsio import durable_write
from .entries import unescape

# of the indexes hs-tx writes; each index names its own (older ones: 64 KiB). Of
# 20,000 members, 230 are read and checked as fast as at 16 KiB, with half the digests
CHUNK = 1 << 15
PREFIX = "index:"  # the journal's checksum of an archive that has an index
_MAGIC = "hs-tx tar index 1"
_BASE = "base "
_BLOCK = 512
_LINE = 65  # a digest line: 64 hex digits and a newline
_PIECE = 1 << 20  # an index is read and written in pieces of about this
_MEMBER_LINE = re.compile(r"^block ([0-9]+): (.*)$", re.MULTILINE)


def index_path(archive: Path) -> Path:
    """Where the index of `archive` lies."""
    return archive.with_name(archive.name + ".index")


class ChunkSums:
    """The SHA-256 of every CHUNK bytes of an archive, as it is written in pieces of
    any size (`update`), written to `out` as the index's digest lines (65 bytes a
    chunk) as they come."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
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
                self.out.write(self._hash.hexdigest().encode() + b"\n")
                self._hash, self._filled = hashlib.sha256(), 0

    def finish(self) -> None:
        """Write the digest of a last partial chunk, if any."""
        if self._filled:
            self.out.write(self._hash.hexdigest().encode() + b"\n")
            self._hash, self._filled = hashlib.sha256(), 0


def write_index(
    sums: IO[bytes], listing: Path, dest: Path, base: tuple[str, str] | None = None
) -> str:
    """Given the chunk digest lines of an archive (the file ChunkSums wrote), the list
    tar wrote of it (`--index-file`) and, for an incremental archive, the (checksum,
    path) of its base, write the index to `dest` durably, a piece at a time, and
    return the checksum to record for the archive. Raises OSError."""
    head = f"{_MAGIC} {CHUNK}\n"
    if base is not None:
        head += f"{_BASE}{base[0]} {base[1]}\n"
    digest = hashlib.sha256()

    def pieces() -> Iterator[bytes]:
        sums.seek(0)
        with open(listing, "rb") as names:
            for part in (io.BytesIO(head.encode()), sums, io.BytesIO(b"members\n"), names):
                while piece := part.read(_PIECE):
                    digest.update(piece)
                    yield piece

    durable_write(dest, pieces(), 0o600)
    return PREFIX + digest.hexdigest()


@dataclass(frozen=True)
class Index:
    """A checked index (see read_index): where the members asked for lie in the archive
    (from the first block of each, extended headers included, to the next member's),
    and the digests of the chunks that hold them; the rest stays in the file."""

    path: Path  # the index file
    checksum: str  # what the journal recorded of it
    chunk: int  # the bytes each digest covers
    sums_at: int  # where its first digest line starts
    chunks: int  # how many chunks the archive has
    places: dict[str, tuple[int, int | None]]  # (start, end; None: the archive's end)
    asked: frozenset[str] | None  # the members whose places and chunks were read (None: all)
    base: tuple[str, str] | None = None  # an incremental archive's: (checksum, path)
    dirs: frozenset[str] = frozenset()  # the members read that are directories
    # chunk -> digest, of those holding the members asked for (None: they lie in most of
    # the archive, which is checked whole then)
    sums: dict[int, bytes] | None = None

    def answers(self, names: Collection[str] | None) -> bool:
        """True when this index was read for the members `names` (None: all of them;
        none: any index serves, its head alone is used)."""
        if names is not None and not names:
            return True
        if names is None or self.asked is None:
            return names is None and self.asked is None
        return self.asked.issuperset(names)

    def holds(self, n: int, chunk: bytes) -> bool:
        """True when `chunk` has the digest recorded for chunk `n` (one of those read)."""
        recorded = None if self.sums is None else self.sums.get(n)
        return recorded is not None and hashlib.sha256(chunk).hexdigest().encode() == recorded

    def spans(self, names: list[str], size: int) -> list[tuple[int, int]] | None:
        """The byte ranges [start, end) of the members `names` (dirs without their
        trailing slash) in an archive of `size` bytes, in archive order; None when one
        is not in the index."""
        places = [self.places.get(name) for name in names]
        if any(p is None for p in places):
            return None
        return sorted({(p[0], size if p[1] is None else p[1]) for p in places if p is not None})


def read_index(archive: Path, checksum: str, names: Collection[str] | None = None) -> Index | None:
    """The index of `archive`, when its file is there with the checksum the journal
    recorded (`index:...`) and well formed; else None (the caller then checks and
    reads the whole archive, and reports what fails). Only the places of the members
    `names` (None: all) are kept, and the digests of the chunks holding them, read
    from the file and checked with it once more (unless they lie in most of the
    archive). Read a piece at a time: no index is held whole. Raises OSError."""
    path = index_path(archive)
    try:
        scan = _scan(path, None if names is None else set(names))
    except FileNotFoundError:
        return None
    if scan is None or PREFIX + scan.digest != checksum:
        return None
    sums: dict[int, bytes] | None = None
    if names:
        ranges = [
            range(start // scan.chunk, _last_chunk(end, scan))
            for start, end in scan.places.values()
        ]
        if sum(map(len, ranges)) <= scan.chunks // 2:  # else the archive is checked whole
            wanted = sorted({n for chunks in ranges for n in chunks})
            sums = _read_sums(path, scan.sums_at, wanted, checksum)
            if sums is None:
                return None
    asked = None if names is None else frozenset(names)
    return Index(
        path, checksum, scan.chunk, scan.sums_at, scan.chunks, scan.places, asked,
        scan.base, frozenset(scan.dirs), sums,
    )  # fmt: skip


def _last_chunk(end: int | None, scan: _Scan) -> int:
    """One past the last chunk holding bytes before `end` (None: the archive's end)."""
    return scan.chunks if end is None else min(scan.chunks, (end - 1) // scan.chunk + 1)


@dataclass
class _Scan:
    """What one reading of an index file found (see _scan)."""

    digest: str = ""
    chunk: int = 0
    base: tuple[str, str] | None = None
    sums_at: int = 0
    chunks: int = 0
    places: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)


def _scan(path: Path, names: set[str] | None) -> _Scan | None:
    """Read the index file `path` through, a piece at a time: its SHA-256, its head,
    where its digest lines lie, and the places of the members `names` (None: all).
    None when it is not well formed. Raises OSError."""
    scan, digest = _Scan(), hashlib.sha256()
    held, at = b"", 0  # bytes not yet taken, and where in the file they start
    stage, last = "head", None  # the member whose end is the next one's start
    with open(path, "rb") as f:
        while piece := f.read(_PIECE):
            digest.update(piece)
            held += piece
            if stage == "head":
                taken = _head(held, scan)
                if taken is None:
                    if len(held) > 1 << 16:
                        return None
                    continue
                held, at, stage = held[taken:], at + taken, "sums"
            if stage == "sums":
                found = held.find(b"members\n")
                if found < 0:  # digest lines: nothing to keep but where they end
                    keep = min(len(held), len("members\n"))
                    held, at = held[len(held) - keep :], at + len(held) - keep
                    continue
                length = at + found - scan.sums_at
                if length % _LINE:
                    return None
                scan.chunks = length // _LINE
                held, stage = held[found + len("members\n") :], "members"
            cut = held.rfind(b"\n") + 1
            last = _members(held[:cut], names, scan, last)
            held = held[cut:]
    if stage != "members":
        return None
    _members(held, names, scan, last)
    scan.digest = digest.hexdigest()
    return scan


def _head(data: bytes, scan: _Scan) -> int | None:
    """Parse the head (first line, a base line) at the start of `data` into `scan`;
    return its length, or None when `data` does not hold two lines yet or its first
    is not an index's (the caller gives up once it has read more than a head holds)."""
    first = data.find(b"\n") + 1
    second = data.find(b"\n", first) + 1
    if not first or not second:
        return None
    magic, _, chunk = data[: first - 1].decode("utf-8", "surrogateescape").rpartition(" ")
    if magic != _MAGIC or not _chunk_size(chunk):
        return None
    scan.chunk, taken = int(chunk), first
    if data.startswith(_BASE.encode(), first):
        scan.base = _base_line(data[first : second - 1].decode("utf-8", "surrogateescape"))
        taken = second
    scan.sums_at = taken
    return taken


def _members(data: bytes, names: set[str] | None, scan: _Scan, last: str | None) -> str | None:
    """Take tar's member lines in `data` into `scan` (the places of `names`, None: all);
    `last`: the member read before them whose end is still open. Return the one
    open now."""
    text = data.decode("utf-8", "surrogateescape")
    escaped = "\\" in text  # most lists escape no name: none is unescaped then
    for block, listed in _MEMBER_LINE.findall(text):
        start = int(block) * _BLOCK
        if last is not None:
            scan.places[last] = (scan.places[last][0], start)
            last = None
        name = unescape(listed) if escaped else listed
        is_dir = name.endswith("/")  # tar's way to list a directory
        name = name.rstrip("/") if is_dir else name
        if names is None or name in names:
            scan.places[name], last = (start, None), name
            if is_dir:
                scan.dirs.add(name)
    return last


def _read_sums(
    path: Path, sums_at: int, chunks: list[int], checksum: str
) -> dict[int, bytes] | None:
    """The digest lines of `chunks` of the index file `path`, read and then the whole
    file checked against `checksum` once more (what was read is what was checked);
    None when it fails. Raises OSError."""
    with open(path, "rb") as f:
        sums = {n: os.pread(f.fileno(), _LINE, sums_at + n * _LINE) for n in chunks}
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if PREFIX + digest != checksum or any(
        len(s) != _LINE or s[-1:] != b"\n" for s in sums.values()
    ):
        return None
    return {n: s[:-1] for n, s in sums.items()}


def _chunk_size(text: str) -> bool:
    """True for a chunk size an index may name: whole tar blocks, 512 B to 16 MiB."""
    return text.isdigit() and 0 < int(text) <= 1 << 24 and int(text) % _BLOCK == 0


def index_matches(archive: Path, checksum: str) -> bool:
    """True when the index of `archive` is there with the checksum the journal recorded
    (`index:...`), read no further. Raises OSError when it cannot be read."""
    try:
        with open(index_path(archive), "rb") as f:
            return PREFIX + hashlib.file_digest(f, "sha256").hexdigest() == checksum
    except FileNotFoundError:
        return False


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


def whole_ok(archive: Path, index: Index) -> bool:
    """True when every chunk of `archive` has the digest the index file holds, read
    beside it, and the index file still has its recorded checksum."""
    with open(index.path, "rb") as sums, open(archive, "rb") as f:
        sums.seek(index.sums_at)
        for _ in range(index.chunks):
            line = sums.read(_LINE)
            if hashlib.sha256(f.read(index.chunk)).hexdigest().encode() + b"\n" != line:
                return False
        if f.read(1):
            return False
        sums.seek(0)
        return PREFIX + hashlib.file_digest(sums, "sha256").hexdigest() == index.checksum


class BadChunk(Exception):
    """A chunk of an archive does not have the digest its index holds."""


def subset(archive: Path, index: Index, spans: list[tuple[int, int]]) -> Iterator[bytes]:
    """The bytes of a tar archive of the byte ranges `spans` of `archive` (whole
    members, in archive order), then an end-of-archive marker. Each chunk is read once
    (two members may share one) and checked against the index before any of its bytes
    is given. Raises BadChunk when one fails, OSError."""
    size, held = index.chunk, -1
    chunk = b""
    with open(archive, "rb", buffering=0) as src:
        for start, end in spans:
            for n in range(start // size, (end - 1) // size + 1):
                if n != held:
                    data = os.pread(src.fileno(), size, n * size)
                    if not index.holds(n, data):
                        raise BadChunk(f"chunk {n} of {archive}")
                    chunk, held = data, n
                offset = n * size
                yield chunk[max(0, start - offset) : end - offset]
    yield bytes(2 * _BLOCK)
