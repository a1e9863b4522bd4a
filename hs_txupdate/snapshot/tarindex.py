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
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
_MEMBER_LINE = re.compile(r"^block ([0-9]+): (.*)$", re.MULTILINE)


def index_path(archive: Path) -> Path:
    """Where the index of `archive` lies."""
    return archive.with_name(archive.name + ".index")


class ChunkSums:
    """The SHA-256 of every CHUNK bytes of an archive, as it is written in pieces of
    any size (`update`), kept as the index's digest lines (65 bytes a chunk)."""

    def __init__(self) -> None:
        self.lines = bytearray()
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
                self.lines += self._hash.hexdigest().encode() + b"\n"
                self._hash, self._filled = hashlib.sha256(), 0

    def digests(self) -> bytes:
        """The digest line of every chunk so far, a last partial one included."""
        last = self._hash.hexdigest().encode() + b"\n" if self._filled else b""
        return bytes(self.lines) + last


def write_index(sums: bytes, listing: Path, dest: Path, base: tuple[str, str] | None = None) -> str:
    """Given the chunk digest lines of an archive (see ChunkSums), the list tar wrote of
    it (`--index-file`) and, for an incremental archive, the (checksum, path) of its
    base, write the index to `dest` durably and return the checksum to record for the
    archive. Raises OSError."""
    head = f"{_MAGIC} {CHUNK}\n"
    if base is not None:
        head += f"{_BASE}{base[0]} {base[1]}\n"
    data = b"".join((head.encode(), sums, b"members\n", listing.read_bytes()))
    durable_write(dest, data, 0o600)
    return PREFIX + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Index:
    """A checked index: the chunk digests and where each member starts (its first
    block, extended headers included), members in archive order."""

    sums: bytes  # the digest lines as the file holds them: line n, bytes 65n to 65n+64
    starts: dict[str, int]
    base: tuple[str, str] | None = None  # an incremental archive's: (checksum, path)
    dirs: frozenset[str] = frozenset()  # the members that are directories
    chunk: int = CHUNK  # the bytes each digest covers

    @property
    def chunks(self) -> int:
        """How many chunks the archive has."""
        return len(self.sums) // _LINE

    def holds(self, n: int, chunk: bytes) -> bool:
        """True when `chunk` has the digest recorded for chunk `n`."""
        recorded = self.sums[n * _LINE : n * _LINE + 64]
        return len(recorded) == 64 and hashlib.sha256(chunk).hexdigest().encode() == recorded

    def spans(self, names: list[str], size: int) -> list[tuple[int, int]] | None:
        """The byte ranges [start, end) of the members `names` (dirs without their
        trailing slash) in an archive of `size` bytes, in archive order; None when one
        is not in the index."""
        starts = [self.starts.get(name) for name in names]
        if any(s is None for s in starts):
            return None
        order = sorted(self.starts.values())
        following = dict(zip(order, [*order[1:], size], strict=True))
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
    first = data.find(b"\n") + 1
    magic, _, chunk = data[:first].decode("utf-8", "surrogateescape").rstrip("\n").rpartition(" ")
    if not first or magic != _MAGIC or not _chunk_size(chunk):
        return None
    base, sums_at = None, first
    if data.startswith(_BASE.encode(), first):
        sums_at = data.find(b"\n", first) + 1
        base = _base_line(data[first : sums_at - 1].decode("utf-8", "surrogateescape"))
    end = data.find(b"members\n", sums_at)  # the digest lines are fixed-width: sliced, not split
    sums = data[sums_at:end]
    if end < 0 or len(sums) % _LINE or sums[64::_LINE] != b"\n" * (len(sums) // _LINE):
        return None
    text = data[end + len(b"members\n") :].decode("utf-8", "surrogateescape")
    members = _MEMBER_LINE.findall(text)
    if "\\" in text:  # most lists escape no name: none is unescaped then
        members = [(block, unescape(name)) for block, name in members]
    starts = {name: int(block) * _BLOCK for block, name in members}
    listed = [name for name in starts if name.endswith("/")]  # tar's way to list a directory
    for name in listed:
        starts[name.rstrip("/")] = starts.pop(name)
    dirs = frozenset(name.rstrip("/") for name in listed)
    return Index(sums, starts, base, dirs, int(chunk))


def _chunk_size(text: str) -> bool:
    """True for a chunk size an index may name: whole tar blocks, 512 B to 16 MiB."""
    return text.isdigit() and 0 < int(text) <= 1 << 24 and int(text) % _BLOCK == 0


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


def whole_ok(archive: Path, index: Index) -> bool:
    """True when every chunk of `archive` has the digest the index holds."""
    with open(archive, "rb") as f:
        chunks = iter(lambda: f.read(index.chunk), b"")
        count = 0
        for n, chunk in enumerate(chunks):
            if not index.holds(n, chunk):
                return False
            count = n + 1
    return count == index.chunks


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
