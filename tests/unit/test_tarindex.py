"""The chunk digests of an archive, taken from the pieces tar writes as it goes, are
those of the whole file read back: a restore checks what was written."""

from __future__ import annotations

import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from hs_txupdate.snapshot.tarindex import CHUNK, ChunkSums


def _whole(data: bytes) -> list[str]:
    return [hashlib.sha256(data[i : i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK)]


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
