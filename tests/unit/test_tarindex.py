"""The chunk digests of an archive, taken from the pieces tar writes as it goes, are
those of the whole file read back: a restore checks what was written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hs_txupdate.snapshot.tarindex import (
    CHUNK,
    PREFIX,
    BadChunk,
    ChunkSums,
    index_path,
    read_index,
    subset,
    whole_ok,
)


def _whole(data: bytes) -> bytes:
    return "".join(_digests(data, CHUNK)).encode()


@settings(max_examples=50, deadline=None)
@given(size=st.integers(0, 5 * CHUNK + 7), cuts=st.lists(st.integers(1, 3 * CHUNK), max_size=30))
def test_chunk_sums_of_pieces_are_those_of_the_whole(size: int, cuts: list[int]) -> None:
    data = os.urandom(size)
    sums = ChunkSums()
    at = 0
    for cut in cuts:
        sums.update(data[at : at + cut])
        at += cut
    sums.update(data[at:])
    assert sums.digests() == _whole(data)


def _archive(tmp_path: Path) -> tuple[Path, bytes]:
    """A GNU tar archive of a few files (one spanning many chunks) and the member list
    tar wrote of it, as hs-tx takes them."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i, size in enumerate((3000, 300_000, 70_000, 10)):
        (tree / f"f{i}").write_bytes(os.urandom(size))
    archive, listing = tmp_path / "a.tar", tmp_path / "a.list"
    subprocess.run(
        ["tar", "--create", f"--file={archive}", "--format=posix", "--verbose",
         "--block-number", f"--index-file={listing}", "--quoting-style=escape",
         f"--directory={tmp_path}", "tree"],
        check=True,
    )  # fmt: skip
    return archive, listing.read_bytes()


def _index_by_hand(archive: Path, listing: bytes, chunk: int) -> str:
    """Write the index of `archive` as an hs-tx with chunks of `chunk` bytes wrote it;
    return its recorded checksum."""
    data = archive.read_bytes()
    sums = "".join(_digests(data, chunk))
    text = f"hs-tx tar index 1 {chunk}\n{sums}members\n".encode() + listing
    index_path(archive).write_bytes(text)
    return PREFIX + hashlib.sha256(text).hexdigest()


def _digests(data: bytes, chunk: int) -> list[str]:
    return [
        hashlib.sha256(data[i : i + chunk]).hexdigest() + "\n" for i in range(0, len(data), chunk)
    ]


@pytest.mark.parametrize("chunk", [1 << 16, CHUNK, 512])
def test_an_index_of_any_chunk_size_checks_and_extracts_its_members(
    tmp_path: Path, chunk: int
) -> None:
    archive, listing = _archive(tmp_path)
    index = read_index(archive, _index_by_hand(archive, listing, chunk))
    assert index is not None and index.chunk == chunk
    assert whole_ok(archive, index)
    wanted = ["tree/f1", "tree/f3"]
    subset_file = tmp_path / "subset.tar"
    spans = index.spans(wanted, archive.stat().st_size)
    assert spans is not None
    subset_file.write_bytes(b"".join(subset(archive, index, spans)))
    with tarfile.open(subset_file) as got, tarfile.open(archive) as whole:
        assert got.getnames() == wanted
        for name in wanted:
            assert got.extractfile(name).read() == whole.extractfile(name).read()  # type: ignore[union-attr]


def test_a_damaged_chunk_fails_the_check_and_the_subset(tmp_path: Path) -> None:
    archive, listing = _archive(tmp_path)
    index = read_index(archive, _index_by_hand(archive, listing, 1 << 16))
    assert index is not None
    spans = index.spans(["tree/f1"], archive.stat().st_size)
    assert spans is not None
    with open(archive, "r+b") as f:  # a byte deep in f1's data
        f.seek(spans[0][0] + 200_000)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    assert not whole_ok(archive, index)
    with pytest.raises(BadChunk):
        b"".join(subset(archive, index, spans))
    other = index.spans(["tree/f0"], archive.stat().st_size)
    assert other is not None and b"".join(subset(archive, index, other))


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t.replace(b"1 65536", b"1 1000"),  # not whole tar blocks
        lambda t: t.replace(b"\nmembers\n", b"\n"),  # no member list
        lambda t: t[:34] + t[35:],  # a digest line one digit short (the header is 24 bytes)
        lambda t: t.replace(b"hs-tx tar index 1", b"hs-tx tar index 2"),
    ],
)
def test_a_malformed_index_is_not_used(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    archive, listing = _archive(tmp_path)
    _index_by_hand(archive, listing, 1 << 16)
    text = damage(index_path(archive).read_bytes())
    index_path(archive).write_bytes(text)
    assert read_index(archive, PREFIX + hashlib.sha256(text).hexdigest()) is None
