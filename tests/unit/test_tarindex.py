"""The chunk digests of an archive, taken from the pieces tar writes as it goes, are
those of the whole file read back: a restore checks what was written."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hs_txupdate.snapshot import tarindex
from hs_txupdate.snapshot.tarindex import (
    CHUNK,
    PREFIX,
    BadChunk,
    ChunkSums,
    index_path,
    read_index,
    subset,
    whole_ok,
    write_index,
)


def _whole(data: bytes) -> bytes:
    return "".join(_digests(data, CHUNK)).encode()


@settings(max_examples=50, deadline=None)
@given(size=st.integers(0, 5 * CHUNK + 7), cuts=st.lists(st.integers(1, 3 * CHUNK), max_size=30))
def test_chunk_sums_of_pieces_are_those_of_the_whole(size: int, cuts: list[int]) -> None:
    data = os.urandom(size)
    out = io.BytesIO()
    sums = ChunkSums(out)
    at = 0
    for cut in cuts:
        sums.update(data[at : at + cut])
        at += cut
    sums.update(data[at:])
    sums.finish()
    assert out.getvalue() == _whole(data)


def _archive(tmp_path: Path) -> tuple[Path, bytes]:
    """A GNU tar archive of a few files (one spanning many chunks) and the member list
    tar wrote of it, as hs-tx takes them."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i, size in enumerate((3000, 300_000, 70_000, 10, *[100_000] * 20)):
        (tree / f"f{i}").write_bytes(os.urandom(size))
    (tree / "new\nline").mkdir()  # a name tar's list escapes
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


@pytest.fixture(params=[1 << 20, 100], ids=["whole", "in-pieces"])
def piece(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """An index read and written in pieces of its usual size, or of 100 bytes: every
    line of it then spans two pieces somewhere."""
    monkeypatch.setattr(tarindex, "_PIECE", request.param)
    return int(request.param)


@pytest.mark.parametrize("chunk", [1 << 16, CHUNK, 512])
def test_an_index_of_any_chunk_size_checks_and_extracts_its_members(
    tmp_path: Path, chunk: int, piece: int
) -> None:
    archive, listing = _archive(tmp_path)
    checksum = _index_by_hand(archive, listing, chunk)
    whole = read_index(archive, checksum)
    assert whole is not None and whole.chunk == chunk and whole.sums is None
    assert whole_ok(archive, whole)
    assert set(whole.places) == {"tree", "tree/new\nline", *(f"tree/f{i}" for i in range(24))}
    assert whole.dirs == {"tree", "tree/new\nline"}
    wanted = ["tree/f1", "tree/f3", "tree/new\nline"]
    index = read_index(archive, checksum, wanted)
    assert index is not None and set(index.places) == set(wanted) and index.answers(wanted[:1])
    subset_file = tmp_path / "subset.tar"
    spans = index.spans(wanted, archive.stat().st_size)
    assert spans is not None and index.sums is not None
    assert len(index.sums) < whole.chunks // 4, "only the chunks holding them are read"
    subset_file.write_bytes(b"".join(subset(archive, index, spans)))
    with tarfile.open(subset_file) as got, tarfile.open(archive) as all_of_it:
        assert got.getnames() == ["tree/f1", "tree/f3", "tree/new\nline"]
        for name in wanted[:2]:
            assert got.extractfile(name).read() == all_of_it.extractfile(name).read()  # type: ignore[union-attr]


def test_an_index_hs_tx_writes_reads_back(tmp_path: Path, piece: int) -> None:
    archive, listing = _archive(tmp_path)
    with tempfile.TemporaryFile() as out:
        sums = ChunkSums(out)
        data = archive.read_bytes()
        for at in range(0, len(data), 7777):
            sums.update(data[at : at + 7777])
        sums.finish()
        listing_file = tmp_path / "listing"
        listing_file.write_bytes(listing)
        checksum = write_index(out, listing_file, index_path(archive), ("sum", "/base.tar"))
    assert (
        index_path(archive)
        .read_bytes()
        .startswith(b"hs-tx tar index 1 32768\nbase sum /base.tar\n")
    )
    index = read_index(archive, checksum, ["tree/f2"])
    assert index is not None and index.base == ("sum", "/base.tar") and whole_ok(archive, index)
    other = checksum[:-1] + ("1" if checksum.endswith("0") else "0")
    assert read_index(archive, other) is None


def test_members_that_lie_in_most_of_the_archive_are_checked_whole(tmp_path: Path) -> None:
    archive, listing = _archive(tmp_path)
    names = [f"tree/f{i}" for i in range(4, 24)]
    index = read_index(archive, _index_by_hand(archive, listing, CHUNK), names)
    assert index is not None and index.sums is None and not index.holds(0, b"")


def test_a_damaged_chunk_fails_the_check_and_the_subset(tmp_path: Path) -> None:
    archive, listing = _archive(tmp_path)
    checksum = _index_by_hand(archive, listing, 1 << 16)
    index = read_index(archive, checksum, ["tree/f1", "tree/f0"])
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
def test_a_malformed_index_is_not_used(
    tmp_path: Path, damage: Callable[[bytes], bytes], piece: int
) -> None:
    archive, listing = _archive(tmp_path)
    _index_by_hand(archive, listing, 1 << 16)
    text = damage(index_path(archive).read_bytes())
    index_path(archive).write_bytes(text)
    checksum = PREFIX + hashlib.sha256(text).hexdigest()
    assert read_index(archive, checksum) is None
    assert read_index(archive, checksum, ["tree/f1"]) is None
